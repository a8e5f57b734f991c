//! Which SIMD kernels run: the best this CPU has, or the one `RWKV_CHAT_SIMD` forces
//! (`portable`, `avx2` or `avx512`), chosen once per process. Forcing a path is for measuring one
//! against another and for checking that each gives the portable loops' results; a path the
//! CPU cannot run is refused with the reason.

use std::fmt;
use std::sync::OnceLock;

/// The environment variable that forces a path.
pub const VARIABLE: &str = "RWKV_CHAT_SIMD";

/// A set of kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    /// Plain loops, vectorised by the compiler for the baseline of the target.
    Portable,
    /// AVX2 with FMA and F16C (x86-64 since Haswell and Zen).
    Avx2,
    /// AVX-512 F and BW with VNNI, beside AVX2 (Intel Xeon since Cascade Lake, Ice Lake and
    /// Tiger Lake laptops, AMD since Zen 4; Intel's desktop and laptop chips since Alder Lake
    /// have no AVX-512). CPUs with AVX-512 but no VNNI (Skylake-SP) run the AVX2 kernels.
    Avx512,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimdError {
    #[error("{VARIABLE}=`{0}` is not a SIMD path; expected portable, avx2 or avx512")]
    Unknown(String),
    #[error("{VARIABLE}={0}: this CPU cannot run it (it has: {1})")]
    Unsupported(Simd, String),
}

impl fmt::Display for Simd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Simd::Portable => "portable",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        })
    }
}

impl Simd {
    /// Every path this CPU can run, the portable one first.
    pub fn supported() -> Vec<Simd> {
        let mut all = vec![Simd::Portable];
        if avx2() {
            all.push(Simd::Avx2);
            if avx512() {
                all.push(Simd::Avx512);
            }
        }
        all
    }

    /// The best path this CPU can run.
    pub fn best() -> Simd {
        Self::supported().pop().unwrap_or(Simd::Portable)
    }

    /// The path `value` (the variable's value) asks for; the best one when unset or empty.
    pub fn from_setting(value: Option<&str>) -> Result<Simd, SimdError> {
        Self::from_setting_among(value, &Self::supported())
    }

    /// [`Simd::from_setting`] on a CPU that runs the paths `supported` (portable first, the
    /// best last).
    fn from_setting_among(value: Option<&str>, supported: &[Simd]) -> Result<Simd, SimdError> {
        let best = supported.last().copied().unwrap_or(Simd::Portable);
        let wanted = match value.map(str::trim) {
            None | Some("") => return Ok(best),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "portable" => Simd::Portable,
                "avx2" => Simd::Avx2,
                "avx512" => Simd::Avx512,
                _ => return Err(SimdError::Unknown(v.to_owned())),
            },
        };
        if supported.contains(&wanted) {
            Ok(wanted)
        } else {
            let names: Vec<String> = supported.iter().map(Simd::to_string).collect();
            Err(SimdError::Unsupported(wanted, names.join(", ")))
        }
    }
}

/// Whether this CPU can run `simd`'s kernels (what the kernels check before they run).
pub fn cpu_runs(simd: Simd) -> bool {
    match simd {
        Simd::Portable => true,
        Simd::Avx2 => avx2(),
        Simd::Avx512 => avx2() && avx512(),
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512() -> bool {
    false
}

static CHOSEN: OnceLock<Simd> = OnceLock::new();

/// The path the variable asks for.
fn from_env() -> Result<Simd, SimdError> {
    Simd::from_setting(std::env::var(VARIABLE).ok().as_deref())
}

/// Reads `RWKV_CHAT_SIMD` and fixes the path for the process; the commands call it first, so
/// a bad value is an error before any work. Later calls return the path already fixed.
pub fn init() -> Result<Simd, SimdError> {
    if let Some(&chosen) = CHOSEN.get() {
        return Ok(chosen);
    }
    let chosen = from_env()?;
    Ok(*CHOSEN.get_or_init(|| chosen))
}

/// The path in use. Without [`init`] (a library user), a bad `RWKV_CHAT_SIMD` is ignored and
/// the best path runs.
pub fn chosen() -> Simd {
    *CHOSEN.get_or_init(|| from_env().unwrap_or_else(|_| Simd::best()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_read_and_checked() {
        assert_eq!(Simd::from_setting(None), Ok(Simd::best()));
        assert_eq!(Simd::from_setting(Some(" ")), Ok(Simd::best()));
        assert_eq!(Simd::from_setting(Some("Portable")), Ok(Simd::Portable));
        let unknown = Simd::from_setting(Some("sse9")).unwrap_err().to_string();
        assert!(unknown.contains("`sse9` is not a SIMD path"), "{unknown}");
        match Simd::from_setting(Some("avx2")) {
            Ok(s) => assert!(avx2() && s == Simd::Avx2),
            Err(e) => {
                assert!(!avx2());
                assert!(
                    e.to_string()
                        .contains("this CPU cannot run it (it has: portable)")
                );
            }
        }
        match Simd::from_setting(Some("AVX512")) {
            Ok(s) => assert!(avx2() && avx512() && s == Simd::Avx512),
            Err(e) => {
                assert!(!(avx2() && avx512()));
                let has = if avx2() { "portable, avx2" } else { "portable" };
                let expected = format!("avx512: this CPU cannot run it (it has: {has})");
                assert!(e.to_string().contains(&expected), "{e}");
            }
        }
        assert_eq!(Simd::best(), *Simd::supported().last().unwrap());
    }

    /// The refusals of CPUs other than this one's: one with AVX2 but no AVX-512, and one with
    /// neither.
    #[test]
    fn a_path_the_cpu_lacks_is_refused_naming_what_it_has() {
        let avx2_only = [Simd::Portable, Simd::Avx2];
        let refused = |value, supported: &[Simd]| {
            Simd::from_setting_among(Some(value), supported)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("avx512", &avx2_only),
            "RWKV_CHAT_SIMD=avx512: this CPU cannot run it (it has: portable, avx2)"
        );
        assert_eq!(
            refused("avx2", &[Simd::Portable]),
            "RWKV_CHAT_SIMD=avx2: this CPU cannot run it (it has: portable)"
        );
        assert_eq!(Simd::from_setting_among(None, &avx2_only), Ok(Simd::Avx2));
        assert_eq!(
            Simd::from_setting_among(Some("avx2"), &avx2_only),
            Ok(Simd::Avx2)
        );
    }
}
