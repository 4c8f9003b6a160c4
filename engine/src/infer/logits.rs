//! The logits of a forward pass, read where ONNX Runtime wrote them.

use ort::value::DynValue;

/// The logits of a forward pass, `[rows, vocab]`, where ONNX Runtime wrote them: of every
/// new position, or (graphs with a `logits_rows` input, asked for fewer) of the last ones.
#[derive(Debug)]
pub struct Logits {
    value: DynValue,
    /// New tokens of the pass.
    rows: usize,
    /// The first of them whose row is held.
    first: usize,
    vocab: usize,
}

impl Logits {
    /// The logits `value` of a pass whose rows are `rows`.
    pub(super) fn new(value: DynValue, rows: Rows, vocab: usize) -> Self {
        Self { value, rows: rows.shown, first: rows.first, vocab }
    }

    /// One row per new token.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The rows held (all of them unless fewer were asked for), row-major.
    pub fn all(&self) -> &[f32] {
        // Checked to be f32 of at least that many rows when the pass returned (a padded
        // pass has more rows than it shows).
        let all = self.value.try_extract_tensor::<f32>().map(|(_, data)| data).unwrap_or(&[]);
        all.get(..(self.rows - self.first) * self.vocab).unwrap_or(&[])
    }

    /// The logits after new token `i` (empty if its row was not asked for).
    pub fn row(&self, i: usize) -> &[f32] {
        let Some(held) = i.checked_sub(self.first) else { return &[] };
        self.all().get(held * self.vocab..(held + 1) * self.vocab).unwrap_or(&[])
    }

    /// The logits after the last new token.
    pub fn last(&self) -> &[f32] {
        self.row(self.rows.saturating_sub(1))
    }
}

/// Which rows of a pass are shown (its tokens; padding follows them) and which have logits
/// (the last `kept`, from `first` on).
#[derive(Debug, Clone, Copy)]
pub(super) struct Rows {
    pub shown: usize,
    pub first: usize,
    pub kept: usize,
}

