//! The autoscaling decision: metrics + policy + recommendation history -> replicas, by the
//! HorizontalPodAutoscaler v2 rules. Pure and clock-free (times are passed in as unix
//! seconds); it must not do IO.
//!
//! Steps, in the HPA's order:
//! 1. no fresh metric: hold the current count (clamped to the bounds), record nothing;
//! 2. ratio = (total / current) / target; within tolerance: recommend current,
//!    else recommend ceil(total / target) (= ceil(current * ratio));
//! 3. stabilization: scale up only to the lowest recommendation of the up-window and
//!    down only to the highest recommendation of the down-window;
//! 4. at most `max_step` pods added or removed per period;
//! 5. never outside `min..=max`.

use std::fmt;

/// The policy for one component.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Metric value one pod should carry (connections, messages/s).
    pub target_per_pod: f64,
    /// Relative deviation of the ratio from 1 that causes no change.
    pub tolerance: f64,
    /// Seconds of history whose lowest recommendation bounds a scale-up.
    pub scale_up_window: i64,
    /// Seconds of history whose highest recommendation bounds a scale-down.
    pub scale_down_window: i64,
    /// Most pods added or removed in one decision.
    pub max_step: i32,
    /// Fewest pods.
    pub min: i32,
    /// Most pods.
    pub max: i32,
    /// A sample older than this many seconds counts as missing.
    pub max_sample_age: i64,
}

/// A metric reading: the sum over all pods of the component and when it was scraped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Sum over the component's pods.
    pub total: f64,
    /// Unix seconds of the newest scrape behind the value.
    pub at: i64,
}

/// One past recommendation (before stabilization).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PastRecommendation {
    /// Unix seconds.
    pub at: i64,
    /// Recommended replicas.
    pub replicas: i32,
}

/// What limited the result after the raw recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A stabilization window held the count back.
    Stabilized,
    /// `max_step` cut the change.
    StepLimited,
    /// `min` or `max` clamped the count.
    Bounded,
}

/// Why the recommendation is what it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Basis {
    /// No sample: nothing is known.
    MetricsMissing,
    /// The newest sample is too old.
    MetricsStale {
        /// Age in seconds.
        age: i64,
    },
    /// The ratio is within tolerance of 1.
    WithinTolerance {
        /// Per-pod value divided by target.
        ratio: f64,
    },
    /// The metric calls for a different count.
    Metric {
        /// Per-pod value divided by target.
        ratio: f64,
    },
}

/// The result for one component.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Replicas to run.
    pub desired: i32,
    /// The raw recommendation to remember for stabilization (`None` without fresh metrics).
    pub recommendation: Option<i32>,
    /// Why.
    pub basis: Basis,
    /// Limits that changed the raw recommendation, in the order applied.
    pub limits: Vec<Limit>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.basis {
            Basis::MetricsMissing => write!(f, "metrics missing, holding")?,
            Basis::MetricsStale { age } => write!(f, "metrics {age}s old, holding")?,
            Basis::WithinTolerance { ratio } => {
                write!(f, "load/target {ratio:.2} within tolerance")?
            }
            Basis::Metric { ratio } => write!(
                f,
                "load/target {ratio:.2}, recommend {}",
                self.recommendation.unwrap_or(self.desired)
            )?,
        }
        for limit in &self.limits {
            let word = match limit {
                Limit::Stabilized => "stabilization window",
                Limit::StepLimited => "max step",
                Limit::Bounded => "replica bounds",
            };
            write!(f, "; limited by {word}")?;
        }
        Ok(())
    }
}

/// Decides the replica count for one component.
pub fn decide(
    policy: &Policy,
    current: i32,
    sample: Option<Sample>,
    history: &[PastRecommendation],
    now: i64,
) -> Decision {
    let (min, max) = (policy.min.max(0), policy.max.max(policy.min.max(0)));
    let fresh = match sample {
        None => Err(Basis::MetricsMissing),
        Some(s) if now - s.at > policy.max_sample_age => {
            Err(Basis::MetricsStale { age: now - s.at })
        }
        Some(s) if !s.total.is_finite() || s.total < 0.0 => Err(Basis::MetricsMissing),
        Some(s) => Ok(s),
    };
    let sample = match fresh {
        Ok(sample) => sample,
        Err(basis) => {
            let desired = current.clamp(min, max);
            let limits = if desired == current {
                vec![]
            } else {
                vec![Limit::Bounded]
            };
            return Decision {
                desired,
                recommendation: None,
                basis,
                limits,
            };
        }
    };

    let target = policy.target_per_pod.max(f64::MIN_POSITIVE);
    let (recommendation, basis) = if current <= 0 {
        // Nothing runs: the per-pod ratio is undefined, size from the total alone.
        let wanted = ceil_replicas(sample.total / target);
        (
            wanted,
            Basis::Metric {
                ratio: f64::INFINITY,
            },
        )
    } else {
        let ratio = sample.total / f64::from(current) / target;
        if (ratio - 1.0).abs() <= policy.tolerance {
            (current, Basis::WithinTolerance { ratio })
        } else {
            (
                ceil_replicas(sample.total / target),
                Basis::Metric { ratio },
            )
        }
    };

    let mut limits = Vec::new();
    let mut up = recommendation;
    let mut down = recommendation;
    for past in history {
        if past.at > now - policy.scale_up_window {
            up = up.min(past.replicas);
        }
        if past.at > now - policy.scale_down_window {
            down = down.max(past.replicas);
        }
    }
    let mut desired = current;
    if desired < up {
        desired = up;
    }
    if desired > down {
        desired = down;
    }
    if desired != recommendation {
        limits.push(Limit::Stabilized);
    }

    let step = policy.max_step.max(1);
    let stepped = desired.clamp(current.saturating_sub(step), current.saturating_add(step));
    if stepped != desired {
        limits.push(Limit::StepLimited);
    }
    let bounded = stepped.clamp(min, max);
    if bounded != stepped {
        limits.push(Limit::Bounded);
    }
    Decision {
        desired: bounded,
        recommendation: Some(recommendation),
        basis,
        limits,
    }
}

/// Drops recommendations older than `keep` seconds and appends the new one.
pub fn remember(
    history: &[PastRecommendation],
    new: Option<PastRecommendation>,
    keep: i64,
    now: i64,
) -> Vec<PastRecommendation> {
    history
        .iter()
        .copied()
        .filter(|past| past.at > now - keep)
        .chain(new)
        .collect()
}

fn ceil_replicas(value: f64) -> i32 {
    let ceiled = value.ceil();
    if ceiled >= f64::from(i32::MAX) {
        i32::MAX
    } else if ceiled <= 0.0 {
        0
    } else {
        // In range by the checks above.
        ceiled as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn policy() -> Policy {
        Policy {
            target_per_pod: 1000.0,
            tolerance: 0.1,
            scale_up_window: 0,
            scale_down_window: 300,
            max_step: 4,
            min: 2,
            max: 10,
            max_sample_age: 120,
        }
    }

    fn at(total: f64) -> Option<Sample> {
        Some(Sample { total, at: NOW - 5 })
    }

    fn past(ago: i64, replicas: i32) -> PastRecommendation {
        PastRecommendation {
            at: NOW - ago,
            replicas,
        }
    }

    struct Row {
        name: &'static str,
        policy: Policy,
        current: i32,
        sample: Option<Sample>,
        history: Vec<PastRecommendation>,
        desired: i32,
        recommendation: Option<i32>,
        limits: Vec<Limit>,
    }

    #[test]
    fn decision_table() {
        let rows = [
            Row {
                name: "scale up: 3 pods at 1500/pod need 5",
                policy: policy(),
                current: 3,
                sample: at(4500.0),
                history: vec![],
                desired: 5,
                recommendation: Some(5),
                limits: vec![],
            },
            Row {
                name: "scale down with empty window history",
                policy: Policy {
                    scale_down_window: 0,
                    ..policy()
                },
                current: 6,
                sample: at(2500.0),
                history: vec![],
                desired: 3,
                recommendation: Some(3),
                limits: vec![],
            },
            Row {
                name: "within tolerance: 1090/pod is 9% over",
                policy: policy(),
                current: 4,
                sample: at(4360.0),
                history: vec![],
                desired: 4,
                recommendation: Some(4),
                limits: vec![],
            },
            Row {
                name: "just outside tolerance: 1110/pod scales up",
                policy: policy(),
                current: 4,
                sample: at(4440.0),
                history: vec![],
                desired: 5,
                recommendation: Some(5),
                limits: vec![],
            },
            Row {
                name: "scale-down stabilization keeps the window's highest",
                policy: policy(),
                current: 6,
                sample: at(2500.0),
                history: vec![past(200, 6), past(100, 5), past(400, 9)],
                desired: 6,
                recommendation: Some(3),
                limits: vec![Limit::Stabilized],
            },
            Row {
                name: "scale-down to the window's highest when it is below current",
                policy: policy(),
                current: 6,
                sample: at(2500.0),
                history: vec![past(200, 4), past(100, 5)],
                desired: 5,
                recommendation: Some(3),
                limits: vec![Limit::Stabilized],
            },
            Row {
                name: "scale-up stabilization keeps the window's lowest",
                policy: Policy {
                    scale_up_window: 60,
                    ..policy()
                },
                current: 3,
                sample: at(6000.0),
                history: vec![past(30, 4)],
                desired: 4,
                recommendation: Some(6),
                limits: vec![Limit::Stabilized],
            },
            Row {
                name: "step limit: 2 -> 10 wanted, +4 allowed",
                policy: policy(),
                current: 2,
                sample: at(10_000.0),
                history: vec![],
                desired: 6,
                recommendation: Some(10),
                limits: vec![Limit::StepLimited],
            },
            Row {
                name: "upper bound",
                policy: Policy {
                    max_step: 100,
                    ..policy()
                },
                current: 8,
                sample: at(20_000.0),
                history: vec![],
                desired: 10,
                recommendation: Some(20),
                limits: vec![Limit::Bounded],
            },
            Row {
                name: "lower bound",
                policy: Policy {
                    scale_down_window: 0,
                    ..policy()
                },
                current: 3,
                sample: at(0.0),
                history: vec![],
                desired: 2,
                recommendation: Some(0),
                limits: vec![Limit::Bounded],
            },
            Row {
                name: "missing metrics hold",
                policy: policy(),
                current: 5,
                sample: None,
                history: vec![past(10, 9)],
                desired: 5,
                recommendation: None,
                limits: vec![],
            },
            Row {
                name: "stale metrics hold",
                policy: policy(),
                current: 5,
                sample: Some(Sample {
                    total: 50_000.0,
                    at: NOW - 600,
                }),
                history: vec![],
                desired: 5,
                recommendation: None,
                limits: vec![],
            },
            Row {
                name: "missing metrics still respect a raised minimum",
                policy: Policy { min: 4, ..policy() },
                current: 2,
                sample: None,
                history: vec![],
                desired: 4,
                recommendation: None,
                limits: vec![Limit::Bounded],
            },
            Row {
                name: "from zero pods, size from the total",
                policy: Policy { min: 0, ..policy() },
                current: 0,
                sample: at(2500.0),
                history: vec![],
                desired: 3,
                recommendation: Some(3),
                limits: vec![],
            },
        ];
        for row in rows {
            let d = decide(&row.policy, row.current, row.sample, &row.history, NOW);
            assert_eq!(d.desired, row.desired, "{}: {d}", row.name);
            assert_eq!(d.recommendation, row.recommendation, "{}: {d}", row.name);
            assert_eq!(d.limits, row.limits, "{}: {d}", row.name);
        }
    }

    #[test]
    fn reasons_read_well() {
        let d = decide(&policy(), 2, at(10_000.0), &[], NOW);
        assert_eq!(
            d.to_string(),
            "load/target 5.00, recommend 10; limited by max step"
        );
        let d = decide(&policy(), 2, None, &[], NOW);
        assert_eq!(d.to_string(), "metrics missing, holding");
    }

    #[test]
    fn remember_prunes_old_and_appends_new() {
        let history = [past(400, 9), past(100, 5)];
        let kept = remember(&history, Some(past(0, 3)), 300, NOW);
        assert_eq!(kept, vec![past(100, 5), past(0, 3)]);
        assert_eq!(remember(&history, None, 50, NOW), vec![]);
    }
}
