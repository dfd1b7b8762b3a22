//! A batch of token sequences as decoder-only models take it: left-padded ids, a mask of real
//! tokens, and positions that count real tokens only (what transformers' `generate` uses).

#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub input_ids: Vec<Vec<i64>>,
    /// 1 for a real token, 0 for padding; covers past tokens too when decoding with a cache.
    pub attention_mask: Vec<Vec<i64>>,
    pub position_ids: Vec<Vec<i64>>,
}

/// `cumsum(mask) - 1`, with padding positions set to 1, over the last `len` entries of each row.
pub fn positions_from_mask(attention_mask: &[Vec<i64>], len: usize) -> Vec<Vec<i64>> {
    attention_mask
        .iter()
        .map(|row| {
            let mut count = 0i64;
            let all: Vec<i64> = row
                .iter()
                .map(|&m| {
                    count += m;
                    if m == 0 { 1 } else { count - 1 }
                })
                .collect();
            all[all.len() - len..].to_vec()
        })
        .collect()
}

impl Batch {
    /// Left-pads `prompts` to a common length with `pad`.
    pub fn left_padded(prompts: &[Vec<i64>], pad: i64) -> Batch {
        let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let input_ids: Vec<Vec<i64>> = prompts
            .iter()
            .map(|p| std::iter::repeat_n(pad, len - p.len()).chain(p.iter().copied()).collect())
            .collect();
        let attention_mask: Vec<Vec<i64>> = prompts
            .iter()
            .map(|p| std::iter::repeat_n(0, len - p.len()).chain(std::iter::repeat_n(1, p.len())).collect())
            .collect();
        let position_ids = positions_from_mask(&attention_mask, len);
        Batch { input_ids, attention_mask, position_ids }
    }

    /// (batch size, new tokens per row).
    pub fn dims(&self) -> (usize, usize) {
        (self.input_ids.len(), self.input_ids.first().map_or(0, Vec::len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_padding_and_positions_follow_transformers() {
        let batch = Batch::left_padded(&[vec![5, 6, 7], vec![8]], 0);
        assert_eq!(batch.input_ids, vec![vec![5, 6, 7], vec![0, 0, 8]]);
        assert_eq!(batch.attention_mask, vec![vec![1, 1, 1], vec![0, 0, 1]]);
        assert_eq!(batch.position_ids, vec![vec![0, 1, 2], vec![1, 1, 0]]);
    }
}
