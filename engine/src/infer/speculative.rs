//! Prompt-lookup (n-gram) speculative decoding. The draft is what followed the latest
//! occurrence of the sequence's last n tokens (n from [`MAX_NGRAM`] down to 1); one forward
//! pass scores the last token plus the whole draft, and draft tokens are accepted while
//! each equals the greedy choice at its position; the first mismatch is replaced by the
//! greedy token. So the output is exactly the greedy output, in fewer passes when the
//! text repeats itself (code edits, quotes, lists): every pass has 2 rows or more, whose
//! results do not depend on how many there are (`decoder.rs`), so the verification sees
//! the very logits plain decoding sees.
//!
//! The draft length adapts to acceptance: it doubles (up to `k`) while whole drafts are
//! accepted, and falls back to one more than the tokens accepted when a draft is cut
//! short, so a pass is only as wide as the text has lately been predictable.

use super::decoder::Decoder;
use super::model::ModelError;
use super::sampling::argmax;

/// Longest n-gram looked up.
pub const MAX_NGRAM: usize = 3;

/// The draft after `sequence`: up to `k` tokens that followed the last occurrence of its
/// final n-gram.
pub fn draft(sequence: &[u32], k: usize) -> Vec<u32> {
    draft_among(sequence, std::iter::empty(), k)
}

/// [`draft`], looking in `others` too (earlier sequences, newest first) where `sequence`
/// has no earlier occurrence of its final n-gram: longer n-grams win, and at one length
/// `sequence` itself comes first.
pub fn draft_among<'a>(sequence: &[u32], others: impl Iterator<Item = &'a [u32]> + Clone, k: usize) -> Vec<u32> {
    for n in (1..=MAX_NGRAM).rev() {
        if sequence.len() < n {
            continue;
        }
        let tail = &sequence[sequence.len() - n..];
        // In `sequence`, an earlier occurrence (not the tail itself).
        if let Some(found) = follows(sequence, tail, k).or_else(|| others.clone().find_map(|other| follows(other, tail, k))) {
            return found;
        }
    }
    Vec::new()
}

/// Up to `k` tokens that follow the latest occurrence of `tail` in `haystack` that has
/// at least one token after it.
fn follows(haystack: &[u32], tail: &[u32], k: usize) -> Option<Vec<u32>> {
    let n = tail.len();
    let start = (0..haystack.len().saturating_sub(n)).rev().find(|&start| &haystack[start..start + n] == tail)?;
    let from = start + n;
    Some(haystack[from..(from + k).min(haystack.len())].to_vec()).filter(|d| !d.is_empty())
}

/// A speculative generation's tokens and how many forward passes it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speculated {
    pub tokens: Vec<u32>,
    pub passes: usize,
    pub drafted: usize,
    pub accepted: usize,
}

/// Greedy output of up to `max_tokens` after `prompt`, with drafts of up to `k` tokens.
pub fn generate(decoder: &mut Decoder, prompt: &[u32], max_tokens: usize, k: usize, stop: &[u32]) -> Result<Speculated, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::Run("the prompt has no tokens".into()));
    }
    let empty = decoder.reserve(decoder.empty_cache()?, prompt.len() + max_tokens + k + 1)?;
    let (logits, mut cache) = decoder.forward_rows(prompt, empty, 1)?;
    let mut out = Speculated { tokens: Vec::new(), passes: 1, drafted: 0, accepted: 0 };
    let mut sequence = prompt.to_vec();
    let mut next = argmax(logits.last());
    // Draft length now: adapted to acceptance, at most `k`.
    let mut width = k.clamp(1, 4);
    loop {
        out.tokens.push(next);
        sequence.push(next);
        if stop.contains(&next) || out.tokens.len() >= max_tokens {
            break;
        }
        let guess = if k == 0 { Vec::new() } else { draft(&sequence, width.min(max_tokens - out.tokens.len())) };
        out.drafted += guess.len();
        let mut input = vec![next];
        input.extend(&guess);
        let (logits, present) = decoder.forward(&input, cache)?;
        out.passes += 1;
        cache = present;
        // Position i's logits predict the token after input[i].
        let mut accepted = 0;
        while accepted < guess.len() {
            let predicted = argmax(logits.row(accepted));
            if predicted != guess[accepted] || out.tokens.len() >= max_tokens || stop.contains(&predicted) {
                break;
            }
            out.tokens.push(predicted);
            sequence.push(predicted);
            accepted += 1;
        }
        out.accepted += accepted;
        if !guess.is_empty() {
            width = if accepted == guess.len() { (width * 2).min(k) } else { accepted + 1 };
        }
        if out.tokens.len() >= max_tokens || out.tokens.last().is_some_and(|t| stop.contains(t)) {
            break;
        }
        next = argmax(logits.row(accepted));
        // Keep the cache of the accepted tokens only: the prefix, `input[0]`, and the
        // accepted draft; the rest of the draft is dropped.
        let keep = cache.len() - (guess.len() - accepted);
        cache.truncate(keep)?;
    }
    out.tokens.truncate(max_tokens);
    decoder.release();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_follow_the_latest_matching_ngram() {
        // ... 1 2 3 [9 8] ... 1 2 3 → draft 9 8
        assert_eq!(draft(&[1, 2, 3, 9, 8, 5, 1, 2, 3], 2), vec![9, 8]);
        assert_eq!(draft(&[1, 2, 3, 9, 8, 5, 1, 2, 3], 5), vec![9, 8, 5, 1, 2]);
        // Falls back to shorter n-grams, and to nothing.
        assert_eq!(draft(&[4, 7, 6, 4], 3), vec![7, 6, 4]);
        assert!(draft(&[1, 2, 3], 4).is_empty());
    }

    #[test]
    fn drafts_come_from_earlier_sequences_where_this_one_has_none() {
        let earlier: [&[u32]; 2] = [&[7, 1, 2, 3, 4], &[9, 2, 3, 8, 8]];
        // [2 3] is in both: the newest (first) one wins; the sequence's own match comes first.
        assert_eq!(draft_among(&[5, 2, 3], earlier.iter().copied(), 2), vec![4]);
        assert_eq!(draft_among(&[2, 3, 6, 2, 3], earlier.iter().copied(), 2), vec![6, 2]);
        // A longer n-gram elsewhere beats a shorter one here.
        assert_eq!(draft_among(&[3, 0, 1, 2, 3], [&[1, 2, 3, 5][..]].into_iter(), 1), vec![5]);
        assert!(draft_among(&[6], earlier.iter().copied(), 3).is_empty());
        assert_eq!(draft_among(&[8], earlier.iter().copied(), 3), vec![8]);
    }
}
