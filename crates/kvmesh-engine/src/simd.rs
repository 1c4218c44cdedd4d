//! The widest SIMD instruction set the engine's kernels may use: what the CPU has, capped by
//! the `KVMESH_MAX_SIMD` environment variable (`scalar`, `avx2` or `avx512`, read once).
//!
//! The kernels pick their implementation at run time, so one binary runs on any x86_64 CPU.
//! [`cpu_level`] is the one definition of which CPU features make a level: the linear
//! kernels, the attention backends' proofs of support and the f16 K/V writes all ask it.
//! The cap exists to compare kernels on one machine (`KVMESH_MAX_SIMD=avx2 kvmesh bench
//! engine`) and to step around a suspected kernel bug without rebuilding. Every level gives the
//! same bits for the linear layers, and the AVX-512 attention gives the AVX2 one's bits, so a
//! cap changes speed, not results (the portable attention differs in rounding).

/// An instruction-set level, ordered from narrowest to widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SimdLevel {
    /// Portable Rust.
    Scalar,
    /// AVX2, FMA and F16C.
    Avx2,
    /// AVX-512F besides the AVX2 set.
    Avx512,
}

/// The level the kernels may use: the CPU's, lowered by `KVMESH_MAX_SIMD` if set.
pub(crate) fn max_level() -> SimdLevel {
    static LEVEL: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("KVMESH_MAX_SIMD") {
            Ok(value) => parse_cap(&value).unwrap_or_else(|| {
                // A developer's knob, read once: say so rather than silently run the widest
                // kernels when a comparison meant to cap them.
                eprintln!(
                    "kvmesh: ignoring KVMESH_MAX_SIMD={value:?}: expected scalar, avx2 or avx512"
                );
                SimdLevel::Avx512
            }),
            Err(_) => SimdLevel::Avx512,
        };
        cpu_level().min(cap)
    })
}

/// A `KVMESH_MAX_SIMD` value (any case, surrounding spaces ignored), or `None` if unknown.
fn parse_cap(value: &str) -> Option<SimdLevel> {
    match value.trim().to_ascii_lowercase().as_str() {
        "scalar" => Some(SimdLevel::Scalar),
        "avx2" => Some(SimdLevel::Avx2),
        "avx512" => Some(SimdLevel::Avx512),
        _ => None,
    }
}

/// The widest level this CPU supports.
pub(crate) fn cpu_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return SimdLevel::Avx512;
        }
        return SimdLevel::Avx2;
    }
    SimdLevel::Scalar
}

#[cfg(test)]
mod tests {
    use super::{parse_cap, SimdLevel};

    #[test]
    fn caps_parse_in_any_case_and_unknown_ones_are_refused() {
        assert_eq!(parse_cap("avx2"), Some(SimdLevel::Avx2));
        assert_eq!(parse_cap(" AVX2 "), Some(SimdLevel::Avx2));
        assert_eq!(parse_cap("Scalar"), Some(SimdLevel::Scalar));
        assert_eq!(parse_cap("avx512"), Some(SimdLevel::Avx512));
        assert_eq!(parse_cap("avx-2"), None);
        assert_eq!(parse_cap(""), None);
    }
}
