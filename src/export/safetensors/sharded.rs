//! Weights split into shards the way transformers does it: tensors in order, a new shard when the
//! next tensor would push the current one past `max-shard-size` (a tensor is never split), files
//! named `model-0000i-of-0000n.safetensors`, and `model.safetensors.index.json` mapping each
//! tensor to its file. One shard is written as plain `model.safetensors`, without an index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::writer::{SafetensorsWriter, TensorEntry, WrittenFile};
use crate::model::folder::{SHARD_INDEX, SINGLE_FILE};

/// Groups `entries` into shards of at most `max_bytes` (a larger tensor gets a shard of its own).
pub fn plan_shards(entries: &[TensorEntry], max_bytes: Option<u64>) -> Vec<Vec<TensorEntry>> {
    let mut shards: Vec<Vec<TensorEntry>> = vec![Vec::new()];
    let mut size = 0u64;
    for entry in entries {
        let bytes = entry.byte_len();
        let full = max_bytes.is_some_and(|max| size + bytes > max);
        if full && shards.last().is_some_and(|s| !s.is_empty()) {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("at least one shard").push(entry.clone());
    }
    shards
}

pub fn shard_file_name(index: usize, count: usize) -> String {
    if count == 1 {
        SINGLE_FILE.to_string()
    } else {
        format!("model-{:05}-of-{count:05}.safetensors", index + 1)
    }
}

/// Streams tensor data into consecutive shards, opening each when its first byte arrives.
pub struct ShardedWriter {
    dir: PathBuf,
    shards: Vec<Vec<TensorEntry>>,
    metadata: Vec<(String, String)>,
    next_shard: usize,
    current: Option<SafetensorsWriter>,
    written: Vec<WrittenFile>,
}

impl ShardedWriter {
    pub fn create(
        dir: &Path,
        entries: &[TensorEntry],
        max_shard_size: Option<u64>,
        metadata: &[(String, String)],
    ) -> std::io::Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            shards: plan_shards(entries, max_shard_size),
            metadata: metadata.to_vec(),
            next_shard: 0,
            current: None,
            written: Vec::new(),
        })
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn open_next(&mut self) -> std::io::Result<()> {
        let i = self.next_shard;
        let Some(entries) = self.shards.get(i) else {
            return Err(std::io::Error::other("more tensor data than the shards declare"));
        };
        let path = self.dir.join(shard_file_name(i, self.shards.len()));
        self.current = Some(SafetensorsWriter::create(&path, entries, &self.metadata)?);
        self.next_shard += 1;
        Ok(())
    }

    /// Appends tensor data, in the order the entries were given.
    pub fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            if self.current.as_ref().is_none_or(|w| w.remaining() == 0) {
                self.close_current()?;
                self.open_next()?;
            }
            let writer = self.current.as_mut().expect("opened above");
            let take = (writer.remaining() as usize).min(bytes.len());
            writer.write(&bytes[..take])?;
            bytes = &bytes[take..];
        }
        Ok(())
    }

    fn close_current(&mut self) -> std::io::Result<()> {
        if let Some(writer) = self.current.take() {
            self.written.push(writer.finish()?);
        }
        Ok(())
    }

    /// Finishes the last shard (and any empty trailing ones) and writes the index; returns every
    /// weight file with its size and hash (the index is a small file hashed with the others).
    pub fn finish(mut self) -> std::io::Result<Vec<WrittenFile>> {
        self.close_current()?;
        while self.next_shard < self.shards.len() {
            self.open_next()?;
            self.close_current()?;
        }
        if self.shards.len() > 1 {
            let mut weight_map = BTreeMap::new();
            let mut total = 0u64;
            for (i, shard) in self.shards.iter().enumerate() {
                for entry in shard {
                    weight_map.insert(entry.name.clone(), shard_file_name(i, self.shards.len()));
                    total += entry.byte_len();
                }
            }
            let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
            let path = self.dir.join(SHARD_INDEX);
            crate::fsutil::write_json(&path, &index).map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TensorDtype;

    fn entry(name: &str, n: usize) -> TensorEntry {
        TensorEntry::new(name, TensorDtype::U8, vec![n])
    }

    #[test]
    fn plan_follows_transformers_rules() {
        let entries = [entry("a", 40), entry("b", 40), entry("c", 30), entry("d", 200), entry("e", 1)];
        let plan = plan_shards(&entries, Some(100));
        let names: Vec<Vec<&str>> =
            plan.iter().map(|s| s.iter().map(|e| e.name.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]);
        assert_eq!(plan_shards(&entries, None).len(), 1);
        assert_eq!(shard_file_name(1, 4), "model-00002-of-00004.safetensors");
        assert_eq!(shard_file_name(0, 1), "model.safetensors");
    }
}
