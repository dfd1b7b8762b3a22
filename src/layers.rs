//! The direction of the source: every module sits in a layer, and a module imports only from
//! its own layer or lower ones, with no cycle between files. The test below reads every
//! `crate::` and `super::` path of `src/` (tests excepted) and holds the code to the table, so a
//! new module has to be placed in it and an upward import fails the suite, not a review.

/// Layers from the bottom; a module's layer is that of its longest listed prefix.
pub const LAYERS: &[&[&str]] = &[
    // Facilities every layer may use: errors, units, safe points, I/O retries, progress, and
    // the two contracts the exporter and the engines share (ONNX names, GGUF vocabulary).
    &["error", "size", "hooks", "retry", "fsutil", "monitor", "onnx_io", "gguf_constants", "layers"],
    &["profile"],
    &["model"],
    &["quant"],
    &["checkpoint"],
    &["config::schema", "config::registry", "config::table"],
    &["presets"],
    &["config"],
    &["merge"],
    &["runtime"],
    &["export"],
    &["loader"],
    &["memory"],
    &["validate"],
    &["pipeline"],
    &["synth", "inspect", "init", "bench"],
    &["cli"],
    &["commands"],
];

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use super::LAYERS;

    /// `a::b` for `src/a/b.rs` and `src/a/b/mod.rs`.
    fn module_of(relative: &Path) -> String {
        let mut parts: Vec<String> =
            relative.with_extension("").iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        parts.join("::")
    }

    fn sources(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                sources(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).unwrap();
                let module = module_of(relative);
                if module == "main" || module == "lib" {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // Unit tests come last in a file and may reach anything.
                let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default().to_string();
                out.insert(module, code);
            }
        }
    }

    /// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
    fn expand(tree: &str) -> Vec<String> {
        let tree = tree.trim();
        let Some(open) = tree.find('{') else {
            return vec![tree.split(" as ").next().unwrap_or_default().trim().to_string()];
        };
        let prefix = tree[..open].trim_end_matches(':').trim();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&inner[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&inner[start..]);
        parts
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .flat_map(expand)
            .map(|p| if prefix.is_empty() { p } else { format!("{prefix}::{p}") })
            .collect()
    }

    /// Every path of `code` that starts at `crate::` or `super::`, as a path from the crate root.
    fn paths(module: &str, is_mod_rs: bool, code: &str) -> Vec<String> {
        let anchor = |path: &str| -> Option<String> {
            if let Some(rest) = path.strip_prefix("crate::") {
                return Some(rest.to_string());
            }
            let mut base: Vec<&str> = module.split("::").collect();
            if !is_mod_rs {
                base.pop(); // `super` of a file module is its folder's module
            }
            let mut rest = path;
            let mut first = true;
            while let Some(r) = rest.strip_prefix("super::") {
                if !first || is_mod_rs {
                    base.pop()?;
                }
                first = false;
                rest = r;
            }
            Some(base.into_iter().chain(std::iter::once(rest)).collect::<Vec<_>>().join("::"))
        };
        let mut out = Vec::new();
        // A `use` ends at the `;` that ends its chunk; it starts on a line of its own.
        for chunk in code.split(';') {
            let mut offset = 0;
            let mut start = None;
            for line in chunk.split_inclusive('\n') {
                // `use`, `pub use`, `pub(crate) use`, `pub(in ..) use`, after any attribute.
                let mut trimmed = line.trim_start();
                while let Some(rest) = trimmed.strip_prefix("#[") {
                    trimmed = rest.split_once(']').map_or("", |(_, after)| after.trim_start());
                }
                let visibility = trimmed.strip_prefix("pub").map(|rest| match rest.strip_prefix('(') {
                    Some(inner) => inner.split_once(')').map_or("", |(_, after)| after),
                    None => rest,
                });
                let after = visibility.map_or(trimmed, str::trim_start);
                if let Some(tree) = after.strip_prefix("use ") {
                    start = Some(offset + line.len() - tree.len());
                }
                offset += line.len();
            }
            let Some(start) = start else { continue };
            let tree = chunk[start..].trim();
            if let Some(own) = tree.strip_prefix("self::") {
                out.extend(expand(own).into_iter().map(|p| format!("{module}::{p}")));
            } else if tree.starts_with("crate::") || tree.starts_with("super::") {
                out.extend(expand(tree).iter().filter_map(|p| anchor(p)));
            } else if is_mod_rs {
                // `use child::X` in a folder's mod.rs names its own child module.
                out.extend(expand(tree).into_iter().map(|p| format!("{module}::{p}")));
            }
        }
        // Paths written inline (`crate::a::b::f(..)`).
        for start in ["crate::", "super::"] {
            let mut rest = code;
            while let Some(at) = rest.find(start) {
                let before = rest[..at].chars().last();
                rest = &rest[at..];
                let end =
                    rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
                let path = rest[..end].trim_end_matches(':');
                // `crate::{..}` groups are `use` trees, expanded above.
                let is_path = path.len() > start.len() - 2;
                if is_path && !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    out.extend(anchor(path));
                }
                rest = &rest[end.max(1)..];
            }
        }
        out
    }

    fn layer_of(module: &str) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (layer, prefixes) in LAYERS.iter().enumerate() {
            for prefix in prefixes.iter() {
                let matches = module == *prefix || module.starts_with(&format!("{prefix}::"));
                if matches && best.is_none_or(|(len, _)| prefix.len() > len) {
                    best = Some((prefix.len(), layer));
                }
            }
        }
        best.map(|(_, layer)| layer)
    }

    /// What each module re-exports: (module, name) -> the path it stands for.
    type Reexports = BTreeMap<(String, String), String>;

    fn reexports(files: &BTreeMap<String, String>, root: &Path) -> Reexports {
        let mut out = Reexports::new();
        for (module, code) in files {
            let is_mod_rs = root.join(module.replace("::", "/")).join("mod.rs").exists();
            for chunk in code.split(';') {
                let Some(at) = chunk.find("\npub use ").or_else(|| chunk.strip_prefix("pub use ").map(|_| 0))
                else {
                    continue;
                };
                let tree = chunk[at..].trim_start().trim_start_matches("pub use ");
                let prefix = format!("pub use {tree}");
                for path in paths(module, is_mod_rs, &prefix) {
                    let name = path.rsplit("::").next().unwrap_or_default().to_string();
                    out.insert((module.clone(), name), path);
                }
            }
        }
        out
    }

    /// The longest module of `modules` that `path` names, through re-exports (those of lib.rs
    /// under the module name "").
    fn target<'a>(modules: &'a BTreeSet<String>, reexports: &Reexports, path: &str) -> Option<&'a String> {
        let parts: Vec<&str> = path.split("::").collect();
        let Some(n) = (1..=parts.len()).rev().find(|&n| modules.contains(&parts[..n].join("::"))) else {
            let real = reexports.get(&(String::new(), parts.first()?.to_string()))?;
            return (real != path).then(|| target(modules, reexports, real)).flatten();
        };
        let module = parts[..n].join("::");
        if let Some(name) = parts.get(n)
            && let Some(real) = reexports.get(&(module.clone(), name.to_string()))
            && real != path
        {
            return target(modules, reexports, real);
        }
        modules.get(&module)
    }

    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = BTreeMap::new();
        sources(&root, &root, &mut files);
        let modules: BTreeSet<String> = files.keys().cloned().collect();
        let mut reexports = reexports(&files, &root);
        // lib.rs's own re-exports (`crate::Error` is `crate::error::Error`).
        let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
        for path in paths("", true, &lib) {
            let path = path.trim_start_matches("::").to_string();
            let name = path.rsplit("::").next().unwrap_or_default().to_string();
            reexports.insert((String::new(), name), path);
        }
        let mut edges = BTreeMap::new();
        for (module, code) in &files {
            let is_mod_rs = root.join(module.replace("::", "/")).join("mod.rs").exists();
            let targets: BTreeSet<String> = paths(module, is_mod_rs, code)
                .iter()
                .filter_map(|p| target(&modules, &reexports, p))
                .filter(|t| *t != module)
                .cloned()
                .collect();
            edges.insert(module.clone(), targets);
        }
        edges
    }

    #[test]
    fn every_module_has_a_layer_and_imports_only_downwards() {
        let graph = graph();
        let mut problems = Vec::new();
        for (module, targets) in &graph {
            let Some(layer) = layer_of(module) else {
                problems.push(format!("{module} is in no layer of src/layers.rs"));
                continue;
            };
            for target in targets {
                if layer_of(target).is_some_and(|t| t > layer) {
                    problems.push(format!("{module} (layer {layer}) imports {target}, a higher layer"));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        // The parser sees imports at all: a few known downward ones.
        assert!(graph["merge::execute"].contains("model::dtype"));
        assert!(graph["runtime::ort_engine"].contains("onnx_io"));
        assert!(graph["config::resolve"].contains("size"));
    }

    #[test]
    fn no_file_imports_itself_through_others() {
        let graph = graph();
        // Depth-first search with colours; a grey target is a back edge, i.e. a cycle.
        fn visit<'a>(
            node: &'a str,
            graph: &'a BTreeMap<String, BTreeSet<String>>,
            colour: &mut BTreeMap<&'a str, u8>,
            stack: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            colour.insert(node, 1);
            stack.push(node);
            for next in graph.get(node).into_iter().flatten() {
                match colour.get(next.as_str()) {
                    Some(1) => {
                        let from = stack.iter().position(|n| n == next).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[from..].iter().map(|s| s.to_string()).collect();
                        cycle.push(next.clone());
                        return Some(cycle);
                    }
                    Some(_) => {}
                    None => {
                        if let Some(cycle) = visit(next, graph, colour, stack) {
                            return Some(cycle);
                        }
                    }
                }
            }
            stack.pop();
            colour.insert(node, 2);
            None
        }
        let mut colour = BTreeMap::new();
        for node in graph.keys() {
            if !colour.contains_key(node.as_str()) {
                let cycle = visit(node, &graph, &mut colour, &mut Vec::new());
                assert!(cycle.is_none(), "import cycle: {}", cycle.unwrap_or_default().join(" -> "));
            }
        }
    }

    #[test]
    fn the_parser_expands_groups_and_resolves_super() {
        assert_eq!(expand("a::{b, c::{d, e as f}}"), ["a::b", "a::c::d", "a::c::e"]);
        let found =
            paths("export::onnx::folder", false, "use super::builder::X;\nlet y = crate::merge::plan::f();");
        assert!(found.contains(&"export::onnx::builder::X".to_string()), "{found:?}");
        assert!(found.contains(&"merge::plan::f".to_string()), "{found:?}");
        let found = paths(
            "export::onnx",
            true,
            "// we use it\nuse super::{staging::Staging, x};\npub use folder::Y;",
        );
        assert_eq!(found, ["export::staging::Staging", "export::x", "export::onnx::folder::Y"]);
        let code = "#[cfg(unix)] pub(super) use self::gguf::Z;\npub(in crate::x) use crate::a::B;";
        let found = paths("runtime", true, code);
        assert!(
            found.contains(&"runtime::gguf::Z".to_string()) && found.contains(&"a::B".to_string()),
            "{found:?}"
        );
        // lib.rs's re-export resolves `crate::Error` to the error module.
        let graph = graph();
        assert!(graph["fsutil"].contains("error"), "{:?}", graph["fsutil"]);
    }
}
