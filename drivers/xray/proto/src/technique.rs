//! Exposure technique and the unit's limits: parsed once, so a technique out of range can
//! never reach the generator.

/// kV, mAs and time as the generator takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Technique {
    /// Tube voltage in tenths of a kV.
    pub kv_x10: u16,
    /// Tube current-time product in hundredths of a mAs.
    pub mas_x100: u32,
    /// Exposure time in milliseconds.
    pub ms: u16,
}

/// The unit's limits. The defaults are those of our portable unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Lowest and highest kV, in tenths.
    pub kv_x10: (u16, u16),
    /// Lowest and highest mAs, in hundredths.
    pub mas_x100: (u32, u32),
    /// Longest exposure, in milliseconds (the shortest is 1).
    pub max_ms: u16,
    /// Highest tube current (mAs over time), in mA.
    pub max_ma: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { kv_x10: (400, 1500), mas_x100: (10, 32_000), max_ms: 3_200, max_ma: 200 }
    }
}

/// Why a technique was refused. Each says what is wrong and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TechniqueError {
    /// kV out of range.
    #[error("{kv} kV is outside this unit's range of {min} to {max} kV")]
    Kv {
        /// Asked.
        kv: String,
        /// Lowest allowed.
        min: String,
        /// Highest allowed.
        max: String,
    },
    /// mAs out of range.
    #[error("{mas} mAs is outside this unit's range of {min} to {max} mAs")]
    Mas {
        /// Asked.
        mas: String,
        /// Lowest allowed.
        min: String,
        /// Highest allowed.
        max: String,
    },
    /// A zero or too long exposure time.
    #[error("an exposure time of {ms} ms is not allowed: choose 1 to {max} ms")]
    Time {
        /// Asked.
        ms: u16,
        /// Longest allowed.
        max: u16,
    },
    /// The mAs cannot be delivered in that time.
    #[error("{mas} mAs in {ms} ms needs {ma} mA, over this unit's {max} mA: lengthen the exposure or lower the mAs")]
    Current {
        /// Asked mAs.
        mas: String,
        /// Asked time.
        ms: u16,
        /// The current that would take.
        ma: u32,
        /// Highest current.
        max: u32,
    },
}

fn tenths(v: u16) -> String {
    format!("{}.{}", v / 10, v % 10)
}

fn hundredths(v: u32) -> String {
    format!("{}.{:02}", v / 100, v % 100)
}

impl Technique {
    /// Checks a technique against `limits`.
    pub fn parse(kv_x10: u16, mas_x100: u32, ms: u16, limits: &Limits) -> Result<Technique, TechniqueError> {
        let t = Technique { kv_x10, mas_x100, ms };
        t.check(limits)?;
        Ok(t)
    }

    /// Whether this technique is within `limits` (see [`Technique::parse`]).
    pub fn check(&self, limits: &Limits) -> Result<(), TechniqueError> {
        let Technique { kv_x10, mas_x100, ms } = *self;
        if kv_x10 < limits.kv_x10.0 || kv_x10 > limits.kv_x10.1 {
            return Err(TechniqueError::Kv {
                kv: tenths(kv_x10),
                min: tenths(limits.kv_x10.0),
                max: tenths(limits.kv_x10.1),
            });
        }
        if mas_x100 < limits.mas_x100.0 || mas_x100 > limits.mas_x100.1 {
            return Err(TechniqueError::Mas {
                mas: hundredths(mas_x100),
                min: hundredths(limits.mas_x100.0),
                max: hundredths(limits.mas_x100.1),
            });
        }
        if ms == 0 || ms > limits.max_ms {
            return Err(TechniqueError::Time { ms, max: limits.max_ms });
        }
        // mA = mAs / s = (mas_x100 / 100) / (ms / 1000) = mas_x100 * 10 / ms, rounded up.
        let ma = (u64::from(mas_x100) * 10).div_ceil(u64::from(ms));
        if ma > u64::from(limits.max_ma) {
            return Err(TechniqueError::Current {
                mas: hundredths(mas_x100),
                ms,
                ma: u32::try_from(ma).unwrap_or(u32::MAX),
                max: limits.max_ma,
            });
        }
        Ok(())
    }

    /// kV as a number.
    pub fn kv(&self) -> f64 {
        f64::from(self.kv_x10) / 10.0
    }

    /// mAs as a number.
    pub fn mas(&self) -> f64 {
        f64::from(self.mas_x100) / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_techniques_say_what_is_allowed() {
        let l = Limits::default();
        let err = |kv, mas, ms| Technique::parse(kv, mas, ms, &l).unwrap_err().to_string();
        assert_eq!(err(1600, 100, 10), "160.0 kV is outside this unit's range of 40.0 to 150.0 kV");
        assert_eq!(err(700, 5, 10), "0.05 mAs is outside this unit's range of 0.10 to 320.00 mAs");
        assert_eq!(err(700, 100, 0), "an exposure time of 0 ms is not allowed: choose 1 to 3200 ms");
        assert!(err(700, 10_000, 100).contains("needs 1000 mA"), "{}", err(700, 10_000, 100));
        assert!(Technique::parse(700, 250, 20, &l).is_ok(), "70 kV, 2.5 mAs, 20 ms: a hand");
    }
}
