//! Fuzzes `kvmesh_tier::record::decode`, the check every onboarded block passes.
//!
//! Contract checked: never a panic; a record accepted for an expectation is exactly the
//! encoding of that expectation's block (so no other bytes can pass for it): re-encoding the
//! verified parts gives back the input.
//!
//! Input: the first 16 bytes are the namespace, the next 16 the hash asked for, then two
//! bytes of token count and that many 4-byte token ids (as far as the input goes), then 4
//! bytes of payload length; the rest is the record.

#![no_main]

use kvmesh_core::SequenceHash;
use kvmesh_tier::record::{decode, encode, Expected, Namespace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 38 {
        return;
    }
    let namespace = Namespace::from_u128(u128::from_le_bytes(data[..16].try_into().unwrap()));
    let hash = SequenceHash::from_u128(u128::from_le_bytes(data[16..32].try_into().unwrap()));
    let count = usize::from(u16::from_le_bytes([data[32], data[33]])) % 64;
    let rest = &data[34..];
    let tokens: Vec<u32> = rest
        .chunks_exact(4)
        .take(count)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let rest = &rest[4 * tokens.len()..];
    if rest.len() < 4 {
        return;
    }
    let payload_len = u64::from(u32::from_le_bytes(rest[..4].try_into().unwrap()) % 4096);
    let bytes = &rest[4..];
    let want = Expected { namespace, hash, tokens: &tokens, payload_len };
    if let Ok(v) = decode(bytes, &want) {
        let again = encode(namespace, hash, v.parent, &tokens, v.payload);
        assert_eq!(again, bytes, "an accepted record is not the encoding of its block");
    }
});
