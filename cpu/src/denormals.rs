//! Denormal floats flushed to zero while compiled code runs. Arithmetic on
//! denormals (magnitudes below 1.2e-38 in f32) costs ~100 cycles an
//! operation on x86 cores, and training makes them: Adam's second moments
//! of rarely-used parameters, softmax weights of masked positions, products
//! of small gradients. With flush-to-zero and denormals-are-zero set (as
//! TensorFlow's and oneDNN's kernels run), such values read and come out as
//! 0: results differ from IEEE arithmetic by less than 1.2e-38.

/// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6).
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = 0x8040;

/// Sets flush-to-zero on this thread until dropped, then restores the
/// thread's previous mode.
pub struct FlushDenormals {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

impl FlushDenormals {
    pub fn new() -> FlushDenormals {
        #[cfg(target_arch = "x86_64")]
        {
            let saved = read_csr();
            write_csr(saved | FTZ_DAZ);
            FlushDenormals { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushDenormals {}
    }
}

impl Default for FlushDenormals {
    fn default() -> FlushDenormals {
        FlushDenormals::new()
    }
}

impl Drop for FlushDenormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        write_csr(self.saved);
    }
}

/// Sets flush-to-zero on this thread for good (the pool's workers, which
/// run nothing but compiled kernels).
pub fn flush_denormals_forever() {
    std::mem::forget(FlushDenormals::new());
}

#[cfg(target_arch = "x86_64")]
fn read_csr() -> u32 {
    let mut csr = 0u32;
    // SAFETY: stmxcsr stores the 32-bit MXCSR to the given address.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags)) };
    csr
}

#[cfg(target_arch = "x86_64")]
fn write_csr(csr: u32) {
    // SAFETY: ldmxcsr loads MXCSR from the given address; only the FTZ and
    // DAZ bits differ from a value the thread already had.
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denormals_read_as_zero_while_flushing_only() {
        let tiny = std::hint::black_box(1e-39f32);
        assert!(tiny * 1.0 > 0.0, "a denormal, multiplied as IEEE says");
        {
            let _flush = FlushDenormals::new();
            assert_eq!(std::hint::black_box(tiny) * std::hint::black_box(1.0f32), 0.0);
            assert_eq!(std::hint::black_box(1e-30f32) * std::hint::black_box(1e-10f32), 0.0, "a denormal result is flushed");
        }
        assert!(std::hint::black_box(tiny) * std::hint::black_box(1.0f32) > 0.0, "the mode is restored");
    }
}
