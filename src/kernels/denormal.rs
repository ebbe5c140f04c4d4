//! Flushing subnormal floats to zero inside the kernels.
//!
//! A multiply-add on a subnormal operand takes a microcode assist on x86, about a hundred times
//! a normal one. Soft masks make them common: PDP's sigmoid mask scales pruned weights by
//! ~1e-30, and a ResNet-20 step at 90% ran 10× slower through both these kernels and Burn's
//! (BENCHMARKS.md s). While a [`FlushGuard`] lives, the thread's MXCSR has FTZ (results) and
//! DAZ (inputs) set: subnormals read and produced as zero, a change below 1.2e-38 in any
//! value, far under f32 training's noise. The previous MXCSR comes back on drop, so code
//! outside the kernels keeps IEEE behaviour.

/// Sets FTZ and DAZ on this thread until dropped (no-op off x86-64).
pub struct FlushGuard {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = 0x8000 | 0x0040;

impl FlushGuard {
    pub fn new() -> FlushGuard {
        #[cfg(target_arch = "x86_64")]
        {
            let saved = read_mxcsr();
            write_mxcsr(saved | FTZ_DAZ);
            FlushGuard { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushGuard {}
    }
}

impl Default for FlushGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        write_mxcsr(self.saved);
    }
}

#[cfg(target_arch = "x86_64")]
fn read_mxcsr() -> u32 {
    let mut v: u32 = 0;
    // SAFETY: stmxcsr stores the 32-bit MXCSR register into the given location.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack, preserves_flags)) };
    v
}

#[cfg(target_arch = "x86_64")]
fn write_mxcsr(v: u32) {
    // SAFETY: ldmxcsr loads MXCSR; only the FTZ/DAZ bits differ from the saved value, which
    // raise no exception.
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack, preserves_flags)) };
}

#[cfg(test)]
mod tests {
    use super::FlushGuard;

    #[test]
    fn subnormals_flush_inside_the_guard_only() {
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        let half = std::hint::black_box(0.5f32);
        assert!(
            (tiny * half) > 0.0,
            "IEEE: a subnormal result outside the guard"
        );
        {
            let _g = FlushGuard::new();
            if cfg!(target_arch = "x86_64") {
                assert_eq!(
                    std::hint::black_box(tiny) * half,
                    0.0,
                    "FTZ inside the guard"
                );
            }
        }
        assert!((tiny * half) > 0.0, "MXCSR restored after the guard");
    }
}
