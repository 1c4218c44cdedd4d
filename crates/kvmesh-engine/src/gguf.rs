//! GGUF: the model file format of llama.cpp, parsed without trusting a single byte of it.
//!
//! Layout (versions 2 and 3, little-endian):
//!
//! ```text
//! "GGUF" | version u32 | tensor count u64 | metadata count u64
//! metadata: key (u64 length + UTF-8) | value type u32 | value      (repeated)
//! tensors:  name | n_dims u32 | dims u64 x n_dims | ggml type u32 | offset u64   (repeated)
//! padding to `general.alignment` (default 32) | tensor data
//! ```
//!
//! Every length and count is checked against the bytes that remain before anything is
//! allocated, so a corrupt or hostile file gives a [`GgufError`] naming the byte offset, never
//! a panic or a huge allocation. Tensor extents are checked against the file when parsed.
//! The file is read into memory whole (SmolLM2-135M Q4_1 is 98 MB); a memory map would save
//! the copy but needs `unsafe` and a file that nobody truncates underneath.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::GgufError;
use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have (ggml's own limit is 4).
const MAX_DIMS: u32 = 8;
/// Deepest nesting of metadata arrays accepted.
const MAX_ARRAY_DEPTH: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values.
    Array(Vec<MetadataValue>),
}

impl MetadataValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::Uint(v) => Some(v),
            MetadataValue::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::Float(v) => Some(v),
            MetadataValue::Uint(v) => Some(v as f64),
            MetadataValue::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string slice, if a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool, if a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array, if an array.
    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// Where a tensor lives and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost first (ggml's `ne`): a `[576, 1536]` weight has 1536 rows of 576.
    pub dims: Vec<u64>,
    /// The ggml element type id (see [`GgmlType`]); unknown ids are kept, and fail on use.
    pub type_id: u32,
    /// Byte offset of its data from the start of the file.
    pub offset: u64,
    /// Byte length of its data (0 when the type is unknown).
    pub len: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file: metadata, tensor directory and the raw bytes.
#[derive(Debug)]
pub struct GgufFile {
    version: u32,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
}

impl GgufFile {
    /// Reads and parses a file.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let bytes = std::fs::read(path).map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(bytes)
    }

    /// Parses a file already in memory.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
        };
        let magic = r.take(4)?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                found: [magic[0], magic[1], magic[2], magic[3]],
            });
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count = r.count("tensors", 8 + 4 + 8 + 4 + 8)?;
        let kv_count = r.count("metadata entries", 8 + 4)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string()?;
            let type_id = r.u32()?;
            let value = r.value(type_id, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count);
        let mut names = std::collections::HashSet::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let at = r.pos;
            let name = r.string()?;
            // Tensors are looked up by name: a second one of the same name would be unreachable
            // (llama.cpp refuses such files too).
            if !names.insert(name.clone()) {
                return Err(GgufError::Malformed {
                    offset: at as u64,
                    what: format!("tensor name '{name}' appears twice"),
                });
            }
            let n_dims = r.u32()?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::Malformed {
                    offset: at as u64,
                    what: format!("tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS})"),
                });
            }
            let dims = (0..n_dims)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let type_id = r.u32()?;
            let offset = r.u64()?;
            tensors.push((at, name, dims, type_id, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two() && *a <= 1 << 20)
                .ok_or_else(|| GgufError::Malformed {
                    offset: r.pos as u64,
                    what: format!("general.alignment is {v:?}, not a power of two"),
                })?,
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        let tensors = tensors
            .into_iter()
            .map(|(at, name, dims, type_id, offset)| {
                let elements = dims
                    .iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                    .ok_or_else(|| GgufError::Malformed {
                        offset: at as u64,
                        what: format!("tensor '{name}' dimensions {dims:?} overflow"),
                    })?;
                let len = match GgmlType::from_id(type_id) {
                    Some(t) => t.bytes_for(elements).ok_or_else(|| GgufError::Malformed {
                        offset: at as u64,
                        what: format!(
                            "tensor '{name}' has {elements} elements, not a whole number of \
                             {t:?} blocks"
                        ),
                    })?,
                    None => 0,
                };
                let start = data_start.checked_add(offset);
                let end = start.and_then(|s| s.checked_add(len));
                match end {
                    Some(end) if end <= file_len => Ok(TensorInfo {
                        name,
                        dims,
                        type_id,
                        offset: data_start + offset,
                        len,
                    }),
                    _ => Err(GgufError::Truncated {
                        offset: data_start.saturating_add(offset),
                        needed: len,
                        what: format!("data of tensor '{name}'"),
                    }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GgufFile {
            version,
            metadata,
            tensors,
            bytes,
        })
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    /// A required unsigned integer.
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingMetadata(key.to_string()))?
            .as_u64()
            .ok_or_else(|| GgufError::WrongMetadataType {
                key: key.to_string(),
                expected: "an unsigned integer",
            })
    }

    /// A required string.
    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingMetadata(key.to_string()))?
            .as_str()
            .ok_or_else(|| GgufError::WrongMetadataType {
                key: key.to_string(),
                expected: "a string",
            })
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor's directory entry.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))
    }

    /// A tensor's raw bytes (extent checked at parse time).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes[info.offset as usize..(info.offset + info.len) as usize]
    }

    /// A tensor dequantised to f32, row-major with `dims[0]` elements per row.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name)?;
        let ty =
            GgmlType::from_id(info.type_id).ok_or_else(|| GgufError::UnsupportedTensorType {
                name: name.to_string(),
                type_id: info.type_id,
            })?;
        let mut out = vec![0.0; info.elements() as usize];
        crate::quant::dequantize(ty, self.tensor_bytes(info), &mut out);
        Ok(out)
    }
}

/// A cursor over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| GgufError::Truncated {
                offset: self.pos as u64,
                needed: n as u64,
                what: "header".to_string(),
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A u64 count of items each at least `min_item_bytes` long, checked against what remains.
    fn count(&mut self, what: &'static str, min_item_bytes: usize) -> Result<usize, GgufError> {
        let at = self.pos;
        let n = self.u64()?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining / min_item_bytes.max(1) as u64 {
            return Err(GgufError::Malformed {
                offset: at as u64,
                what: format!("{n} {what} cannot fit in the {remaining} bytes left"),
            });
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let at = self.pos;
        let n = self.count("string bytes", 1)?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::Malformed {
            offset: at as u64,
            what: "a string is not UTF-8".to_string(),
        })
    }

    fn value(&mut self, type_id: u32, depth: u32) -> Result<MetadataValue, GgufError> {
        use MetadataValue as V;
        let at = self.pos;
        Ok(match type_id {
            0 => V::Uint(u64::from(self.array::<1>()?[0])),
            1 => V::Int(i64::from(self.array::<1>()?[0] as i8)),
            2 => V::Uint(u64::from(u16::from_le_bytes(self.array()?))),
            3 => V::Int(i64::from(i16::from_le_bytes(self.array()?))),
            4 => V::Uint(u64::from(self.u32()?)),
            5 => V::Int(i64::from(i32::from_le_bytes(self.array()?))),
            6 => V::Float(f64::from(f32::from_le_bytes(self.array()?))),
            7 => match self.array::<1>()?[0] {
                0 => V::Bool(false),
                1 => V::Bool(true),
                b => {
                    return Err(GgufError::Malformed {
                        offset: at as u64,
                        what: format!("bool value {b}"),
                    })
                }
            },
            8 => V::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Malformed {
                        offset: at as u64,
                        what: format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    });
                }
                let item_type = self.u32()?;
                let min = match item_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => {
                        return Err(GgufError::Malformed {
                            offset: at as u64,
                            what: format!("unknown metadata value type {t}"),
                        })
                    }
                };
                let n = self.count("array items", min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_type, depth + 1)?);
                }
                V::Array(items)
            }
            10 => V::Uint(self.u64()?),
            11 => V::Int(i64::from_le_bytes(self.array()?)),
            12 => V::Float(f64::from_le_bytes(self.array()?)),
            t => {
                return Err(GgufError::Malformed {
                    offset: at as u64,
                    what: format!("unknown metadata value type {t}"),
                })
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a GGUF file in memory: metadata (key, type id, encoded value) and F32 tensors.
    pub(crate) fn build(
        metadata: &[(&str, u32, Vec<u8>)],
        tensors: &[(&str, Vec<u64>, Vec<f32>)],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        };
        for (k, t, v) in metadata {
            string(&mut b, k);
            b.extend_from_slice(&t.to_le_bytes());
            b.extend_from_slice(v);
        }
        let mut offset = 0u64;
        for (name, dims, data) in tensors {
            string(&mut b, name);
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offset += (data.len() * 4).div_ceil(32) as u64 * 32;
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for (_, _, data) in tensors {
            let start = b.len();
            for x in data {
                b.extend_from_slice(&x.to_le_bytes());
            }
            while (b.len() - start) % 32 != 0 {
                b.push(0);
            }
        }
        b
    }

    pub(crate) fn u32v(v: u32) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    pub(crate) fn strv(s: &str) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(s.as_bytes());
        b
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend_from_slice(&2u64.to_le_bytes());
        arr.extend(strv("a"));
        arr.extend(strv("bc"));
        let bytes = build(
            &[
                ("general.architecture", 8, strv("llama")),
                ("llama.block_count", 4, u32v(2)),
                ("tokens", 9, arr),
            ],
            &[("w", vec![3, 2], vec![1., 2., 3., 4., 5., 6.])],
        );
        let f = GgufFile::parse(bytes).unwrap();
        assert_eq!(f.require_str("general.architecture").unwrap(), "llama");
        assert_eq!(f.require_u64("llama.block_count").unwrap(), 2);
        assert_eq!(f.get("tokens").unwrap().as_array().unwrap().len(), 2);
        assert_eq!(f.tensor_f32("w").unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        assert!(matches!(
            f.tensor_f32("x"),
            Err(GgufError::MissingTensor(_))
        ));
        assert!(matches!(
            f.require_u64("general.architecture"),
            Err(GgufError::WrongMetadataType { .. })
        ));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = build(
            &[("general.architecture", 8, strv("llama"))],
            &[("w", vec![8], vec![1.0; 8])],
        );
        for cut in 0..bytes.len() {
            assert!(
                GgufFile::parse(bytes[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
        assert!(GgufFile::parse(bytes).is_ok());
    }

    #[test]
    fn a_repeated_tensor_name_is_an_error() {
        let bytes = build(
            &[],
            &[("w", vec![8], vec![1.0; 8]), ("w", vec![8], vec![2.0; 8])],
        );
        match GgufFile::parse(bytes) {
            Err(GgufError::Malformed { what, .. }) => assert!(what.contains("'w' appears twice")),
            other => panic!("expected a malformed-file error, got {other:?}"),
        }
    }

    #[test]
    fn hostile_counts_are_rejected_before_allocating() {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            GgufFile::parse(b),
            Err(GgufError::Malformed { offset: 8, .. })
        ));
        assert!(matches!(
            GgufFile::parse(b"GGML\x03\0\0\0".to_vec()),
            Err(GgufError::BadMagic { .. })
        ));
        let mut v9 = MAGIC.to_vec();
        v9.extend_from_slice(&9u32.to_le_bytes());
        assert!(matches!(
            GgufFile::parse(v9),
            Err(GgufError::UnsupportedVersion(9))
        ));
    }
}
