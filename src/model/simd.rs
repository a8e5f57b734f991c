//! Which SIMD kernels run: the best this CPU has, or the one `RWKV_CHAT_SIMD` forces
//! (`portable`, `avx2` or `avx512`), chosen once per process. Forcing a path is for measuring one
//! against another and for checking that each gives the portable loops' results; a path the
//! CPU cannot run is refused with the reason.
//!
//! Also how far ahead the AVX-512 float dots prefetch their weights ([`float_prefetch`]):
//! software prefetch sped the token step up on the Intel machine this project measured and
//! slowed it down on the AMD Zen 4 (BENCHMARKS.md), so it depends on the CPU, and
//! `RWKV_CHAT_PREFETCH` (bytes, 0 for none) sets it for measuring.

use std::fmt;
use std::sync::OnceLock;

/// The environment variable that forces a path.
pub const VARIABLE: &str = "RWKV_CHAT_SIMD";

/// The environment variable that sets [`float_prefetch`].
pub const PREFETCH_VARIABLE: &str = "RWKV_CHAT_PREFETCH";

/// The longest prefetch distance `RWKV_CHAT_PREFETCH` takes, in bytes.
const MAX_PREFETCH: usize = 16384;

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
    #[error(
        "{PREFETCH_VARIABLE}=`{0}` is not a prefetch distance; expected a number of bytes, a \
         multiple of 64 up to {MAX_PREFETCH} (0: no prefetch)"
    )]
    Prefetch(String),
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

/// Whether this CPU can run `simd`'s kernels (what the kernels check before they run). Read
/// once: it is asked before every row task's product, and six feature lookups per ask were
/// most of a percent of a token step.
#[inline]
pub fn cpu_runs(simd: Simd) -> bool {
    static RUNS: OnceLock<(bool, bool)> = OnceLock::new();
    let &(runs_avx2, runs_avx512) = RUNS.get_or_init(|| (avx2(), avx2() && avx512()));
    match simd {
        Simd::Portable => true,
        Simd::Avx2 => runs_avx2,
        Simd::Avx512 => runs_avx512,
    }
}

/// Runs `$portable($args)`, or where `$level` asks for AVX-512 or AVX2 and the CPU has it,
/// the copy compiled for that path (`#[target_feature]` functions, which are unsafe to call
/// on a CPU without the features: the check here is what makes the call sound). Returns from
/// the function it is used in when a SIMD copy runs.
macro_rules! dispatch {
    ($level:expr, $avx512:path, $avx2:path, $portable:path, $($arg:expr),*) => {{
        #[cfg(not(target_arch = "x86_64"))]
        let _ = $level;
        #[cfg(target_arch = "x86_64")]
        if $crate::model::simd::cpu_runs($level) {
            match $level {
                // SAFETY: the CPU has just been checked for the features of the path, which
                // its copies are compiled for.
                $crate::model::simd::Simd::Avx512 => return unsafe { $avx512($($arg),*) },
                $crate::model::simd::Simd::Avx2 => return unsafe { $avx2($($arg),*) },
                $crate::model::simd::Simd::Portable => {}
            }
        }
        $portable($($arg),*)
    }};
}
pub(crate) use dispatch;

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

/// How far ahead the AVX-512 float dots prefetch, in bytes, where nothing says otherwise: the
/// distance tuned on the Intel machine.
pub const PREFETCH_DISTANCE: usize = 2048;

/// How far ahead the integer kernels (q8, q5 and q4, on AVX2 and AVX-512) prefetch their
/// weights, in bytes. They spend more time per byte than the float dots, so the hardware
/// prefetcher alone falls behind them. On AMD's Zen 5 the AVX2 token products read 17 to 23%
/// faster from memory at this distance than at 1024, the AVX-512 ones about 5% faster than at
/// 2048; on the Intel AVX-512 machine 1536 to 3072 were close (BENCHMARKS.md).
pub const INTEGER_PREFETCH: usize = 4096;

/// The float dots' distance without `RWKV_CHAT_PREFETCH`: none on `amd_zen4` (measured slower
/// there), else [`PREFETCH_DISTANCE`].
fn default_prefetch(amd_zen4: bool) -> usize {
    if amd_zen4 { 0 } else { PREFETCH_DISTANCE }
}

/// The float dots' prefetch distance `value` (the variable's value) asks for, in bytes; the
/// default when unset or empty.
fn prefetch_from_setting(value: Option<&str>, amd_zen4: bool) -> Result<usize, SimdError> {
    match value.map(str::trim) {
        None | Some("") => Ok(default_prefetch(amd_zen4)),
        Some(v) => match v.parse::<usize>() {
            Ok(bytes) if bytes.is_multiple_of(64) && bytes <= MAX_PREFETCH => Ok(bytes),
            _ => Err(SimdError::Prefetch(v.to_owned())),
        },
    }
}

/// Whether this is an AMD CPU of family 19h (Zen 3 and Zen 4; of them only Zen 4 has AVX-512).
#[cfg(target_arch = "x86_64")]
fn amd_zen4() -> bool {
    use std::arch::x86_64::__cpuid;
    // SAFETY: `cpuid` is on every x86-64 CPU, and leaves 0 and 1 always exist. (A safe
    // function in newer Rust; `unsafe` in the oldest this crate builds with.)
    #[allow(unused_unsafe)]
    let (vendor, signature) = unsafe { (__cpuid(0), __cpuid(1).eax) };
    let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
    // The base family plus the extended family (which AMD sets only when the base is 0xf).
    let family = ((signature >> 8) & 0xf) + ((signature >> 20) & 0xff);
    amd && family == 0x19
}

#[cfg(not(target_arch = "x86_64"))]
fn amd_zen4() -> bool {
    false
}

static PREFETCH: OnceLock<usize> = OnceLock::new();

fn prefetch_from_env() -> Result<usize, SimdError> {
    prefetch_from_setting(std::env::var(PREFETCH_VARIABLE).ok().as_deref(), amd_zen4())
}

/// How many bytes ahead of their reads the AVX-512 f32, f16 and bf16 dots prefetch the
/// weights (0: they leave it to the hardware). Without [`init`], a bad value is ignored.
pub fn float_prefetch() -> usize {
    *PREFETCH.get_or_init(|| prefetch_from_env().unwrap_or_else(|_| default_prefetch(amd_zen4())))
}

static CHOSEN: OnceLock<Simd> = OnceLock::new();

/// The path the variable asks for.
fn from_env() -> Result<Simd, SimdError> {
    Simd::from_setting(std::env::var(VARIABLE).ok().as_deref())
}

/// Reads `RWKV_CHAT_SIMD` and `RWKV_CHAT_PREFETCH` and fixes them for the process; the
/// commands call it first, so a bad value is an error before any work. Later calls return the
/// path already fixed.
pub fn init() -> Result<Simd, SimdError> {
    if PREFETCH.get().is_none() {
        let bytes = prefetch_from_env()?;
        PREFETCH.get_or_init(|| bytes);
    }
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

    #[test]
    fn prefetch_distances_are_read_and_checked() {
        assert_eq!(prefetch_from_setting(None, true), Ok(0));
        assert_eq!(prefetch_from_setting(Some(""), false), Ok(2048));
        assert_eq!(prefetch_from_setting(Some(" 1024 "), true), Ok(1024));
        assert_eq!(prefetch_from_setting(Some("0"), false), Ok(0));
        assert_eq!(prefetch_from_setting(Some("16384"), false), Ok(16384));
        for bad in ["100", "16448", "-64", "2k", "lots"] {
            let message = prefetch_from_setting(Some(bad), false)
                .unwrap_err()
                .to_string();
            assert_eq!(
                message,
                format!(
                    "RWKV_CHAT_PREFETCH=`{bad}` is not a prefetch distance; expected a number \
                     of bytes, a multiple of 64 up to 16384 (0: no prefetch)"
                )
            );
        }
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
