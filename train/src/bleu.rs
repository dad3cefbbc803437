//! BLEU as the course defines it (§62's `bleu`): for a predicted and a
//! reference sentence (tokens split on single spaces),
//! `exp(min(0, 1 - len_label / len_pred)) · Π_{n=1..k} p_n^(1/2^n)`, where
//! `p_n` is the share of the prediction's n-grams found in the reference,
//! each reference n-gram matched at most as often as it occurs there.

use std::collections::HashMap;

/// The course's `bleu(pred_seq, label_seq, k)`. Where the prediction has
/// fewer than `n` tokens it has no n-grams and the course's code divides
/// by zero; here that `p_n` is 0, so the score is 0.
pub fn bleu(pred: &str, label: &str, k: usize) -> f64 {
    let pred: Vec<&str> = pred.split(' ').collect();
    let label: Vec<&str> = label.split(' ').collect();
    let (len_pred, len_label) = (pred.len() as f64, label.len() as f64);
    let mut score = (1.0 - len_label / len_pred).min(0.0).exp();
    for n in 1..=k {
        if pred.len() < n {
            return 0.0;
        }
        let mut label_subs: HashMap<&[&str], usize> = HashMap::new();
        for gram in label.windows(n) {
            *label_subs.entry(gram).or_default() += 1;
        }
        let mut matches = 0usize;
        for gram in pred.windows(n) {
            if let Some(left) = label_subs.get_mut(gram).filter(|c| **c > 0) {
                *left -= 1;
                matches += 1;
            }
        }
        score *= (matches as f64 / (pred.len() - n + 1) as f64).powf(0.5f64.powi(n as i32));
    }
    score
}

#[cfg(test)]
mod tests {
    use super::bleu;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn the_courses_translations_by_hand() {
        assert_eq!(bleu("va !", "va !", 2), 1.0);
        // Same length; unigrams 3/4 match, bigrams 1/3 ("il est"):
        // (3/4)^(1/2) (1/3)^(1/4) = 0.658, the book's figure.
        assert!(close(bleu("il est riche .", "il est calme .", 2), 0.75f64.sqrt() * (1.0f64 / 3.0).powf(0.25)));
        assert_eq!(format!("{:.3}", bleu("il est riche .", "il est calme .", 2)), "0.658");
        // 2/5 unigrams, 1/4 bigrams: 0.447, the book's figure.
        assert_eq!(format!("{:.3}", bleu("je suis en retard ?", "je suis chez moi .", 2)), "0.447");
    }

    #[test]
    fn short_predictions_pay_the_brevity_penalty_and_counts_are_clipped() {
        // One token of two: exp(1 - 2/1) · 1.
        assert!(close(bleu("va", "va !", 1), (-1.0f64).exp()));
        // "a" occurs once in the reference, so only one of three matches;
        // a longer prediction has no penalty.
        assert!(close(bleu("a a a", "a", 1), (1.0f64 / 3.0).sqrt()));
        // No bigram in a one-token prediction: 0, not a division by zero.
        assert_eq!(bleu("va", "va !", 2), 0.0);
        assert_eq!(bleu("x y", "va !", 2), 0.0);
    }
}
