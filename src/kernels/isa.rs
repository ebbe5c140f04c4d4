//! Which vector instructions the kernels run on.
//!
//! The micro-kernels are compiled once per level and one is chosen at run time from what the
//! CPU has, so one binary runs everywhere and uses the widest registers it finds. A caller can
//! cap the level on its own thread ([`Cap`], [`with_limit`]): the tests check every compiled level on
//! one machine, and the benchmarks compare them side by side in one run.

use std::cell::Cell;
use std::sync::OnceLock;

/// A level of x86 vector instructions, narrowest first (elsewhere only [`Isa::Baseline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// What the compilation target guarantees (SSE2 on x86-64).
    Baseline,
    /// 256-bit AVX2 with fused multiply-add.
    Avx2,
    /// 512-bit AVX-512F (32 vector registers).
    Avx512,
}

thread_local! {
    static LIMIT: Cell<Option<Isa>> = const { Cell::new(None) };
}

impl Isa {
    /// The widest level this CPU has (detected once).
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") {
                    return Isa::Avx512;
                }
                if has!("avx2") && has!("fma") {
                    return Isa::Avx2;
                }
            }
            Isa::Baseline
        })
    }

    /// The level the kernels use on this thread: the detected one, capped by [`with_limit`].
    pub fn current() -> Isa {
        let detected = Isa::detected();
        LIMIT
            .with(|l| l.get())
            .map_or(detected, |cap| cap.min(detected))
    }

    /// Every level this CPU can run, narrowest first.
    pub fn available() -> Vec<Isa> {
        [Isa::Baseline, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&i| i <= Isa::detected())
            .collect()
    }

    /// Parses `baseline`, `avx2` or `avx512`.
    pub fn parse(name: &str) -> Option<Isa> {
        match name {
            "baseline" => Some(Isa::Baseline),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }
}

/// While it lives, the kernels called from this thread are capped at a level (the choice is
/// made on the calling thread before work is spread over others); the previous cap comes back
/// on drop.
pub struct Cap {
    previous: Option<Isa>,
}

impl Cap {
    pub fn new(limit: Isa) -> Cap {
        Cap {
            previous: LIMIT.with(|l| l.replace(Some(limit))),
        }
    }
}

impl Drop for Cap {
    fn drop(&mut self) {
        LIMIT.with(|l| l.set(self.previous));
    }
}

/// Runs `f` under a [`Cap`] at `limit`.
pub fn with_limit<R>(limit: Isa, f: impl FnOnce() -> R) -> R {
    let _cap = Cap::new(limit);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_nest_restore_and_never_exceed_the_cpu() {
        let top = Isa::detected();
        assert_eq!(Isa::current(), top);
        assert_eq!(Isa::available().last(), Some(&top));
        with_limit(Isa::Baseline, || {
            assert_eq!(Isa::current(), Isa::Baseline);
            // A wider cap than the CPU has still gives what the CPU has.
            with_limit(Isa::Avx512, || assert_eq!(Isa::current(), top));
            assert_eq!(Isa::current(), Isa::Baseline);
            // Other threads keep their own (absent) cap.
            let other = std::thread::spawn(Isa::current).join().unwrap();
            assert_eq!(other, top);
        });
        assert_eq!(Isa::current(), top);
        assert_eq!(Isa::parse("avx2"), Some(Isa::Avx2));
        assert_eq!(Isa::parse("sse9"), None);
    }
}
