//! The arithmetic of token-level PPO that needs no model: per-token rewards with the KL
//! penalty, generalised advantage estimation, whitening, and the adaptive KL coefficient.

use serde::{Deserialize, Serialize};

/// Per-token rewards of one sequence: −β·(log π − log π_ref) at every token, plus the
/// sequence's score at the last token (Ziegler et al. 2019; the paper's reward is the
/// score, Section 3.4). `logp` and `ref_logp` have one entry per generated token.
pub fn token_rewards(score: f64, logp: &[f64], ref_logp: &[f64], kl_coef: f64) -> Vec<f64> {
    let mut r: Vec<f64> = logp
        .iter()
        .zip(ref_logp)
        .map(|(a, b)| -kl_coef * (a - b))
        .collect();
    if let Some(last) = r.last_mut() {
        *last += score;
    }
    r
}

/// Generalised advantage estimation over one sequence (Schulman et al. 2016):
/// δ_t = r_t + γ·V_{t+1} − V_t (V after the last token is 0), A_t = Σ (γλ)^k δ_{t+k}.
/// Returns (advantages, returns = advantages + values).
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut running = 0.0;
    for t in (0..n).rev() {
        let next = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next - values[t];
        running = delta + gamma * lambda * running;
        adv[t] = running;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// Shifts and scales `xs` to mean 0 and standard deviation 1 (unchanged in scale when
/// they are all equal).
pub fn whiten(xs: &mut [f64]) {
    if xs.is_empty() {
        return;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let scale = if var > 1e-12 { 1.0 / var.sqrt() } else { 1.0 };
    for x in xs {
        *x = (*x - mean) * scale;
    }
}

/// The KL penalty coefficient β. Adaptive (Ziegler et al. 2019): after each step, with
/// the batch's mean KL per sequence,
/// β ← β · (1 + clip(KL / target − 1, −0.2, 0.2) · samples / horizon).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlController {
    /// The current coefficient.
    pub coef: f64,
    /// Target KL per sequence, nats; `None` keeps β fixed.
    pub target: Option<f64>,
    /// Samples over which β may change by about 20%.
    pub horizon: f64,
}

impl KlController {
    /// Moves β after a step of `samples` sequences whose mean KL was `kl`.
    pub fn update(&mut self, kl: f64, samples: usize) {
        let Some(target) = self.target else { return };
        if !kl.is_finite() || target <= 0.0 {
            return;
        }
        let error = (kl / target - 1.0).clamp(-0.2, 0.2);
        self.coef *= 1.0 + error * samples as f64 / self.horizon.max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_with_lambda_one_is_the_return_minus_the_value() {
        let r = [0.0, 0.0, 1.0];
        let v = [0.5, 0.2, 0.1];
        let (adv, ret) = gae(&r, &v, 1.0, 1.0);
        for t in 0..3 {
            assert!((ret[t] - 1.0).abs() < 1e-12, "{ret:?}");
            assert!((adv[t] - (1.0 - v[t])).abs() < 1e-12);
        }
    }

    #[test]
    fn gae_matches_a_hand_computation() {
        // gamma 1, lambda 0.5: d2 = 1 - 0.1, d1 = 0 + 0.1 - 0.2, d0 = 0 + 0.2 - 0.5.
        let (adv, _) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.1], 1.0, 0.5);
        let d = [-0.3, -0.1, 0.9];
        let want = [d[0] + 0.5 * d[1] + 0.25 * d[2], d[1] + 0.5 * d[2], d[2]];
        for t in 0..3 {
            assert!((adv[t] - want[t]).abs() < 1e-12, "{adv:?} vs {want:?}");
        }
    }

    #[test]
    fn kl_penalty_lands_on_every_token_and_the_score_on_the_last() {
        let r = token_rewards(2.0, &[-1.0, -2.0], &[-1.5, -2.0], 0.2);
        assert!(
            (r[0] + 0.1).abs() < 1e-12 && (r[1] - 2.0).abs() < 1e-12,
            "{r:?}"
        );
        assert!(token_rewards(1.0, &[], &[], 0.2).is_empty());
    }

    #[test]
    fn whitening_centres_and_scales() {
        let mut xs = vec![1.0, 2.0, 3.0, 4.0];
        whiten(&mut xs);
        let mean: f64 = xs.iter().sum::<f64>() / 4.0;
        let var: f64 = xs.iter().map(|x| x * x).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-9);
        let mut same = vec![3.0, 3.0];
        whiten(&mut same);
        assert_eq!(same, vec![0.0, 0.0]);
    }

    #[test]
    fn the_coefficient_follows_the_kl_towards_its_target() {
        let mut k = KlController {
            coef: 0.2,
            target: Some(6.0),
            horizon: 100.0,
        };
        k.update(12.0, 10);
        assert!((k.coef - 0.2 * 1.02).abs() < 1e-12, "{}", k.coef);
        k.update(0.0, 10);
        assert!(k.coef < 0.2 * 1.02);
        let mut fixed = KlController { target: None, ..k };
        fixed.update(100.0, 10);
        assert_eq!(fixed.coef, k.coef);
        k.update(f64::NAN, 10);
        assert!(k.coef.is_finite());
    }
}
