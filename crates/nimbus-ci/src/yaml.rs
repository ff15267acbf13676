//! YAML text → a small tree of positioned nodes.
//!
//! Built from `saphyr-parser` events by an explicit stack, so no input can recurse deeply:
//! nesting is capped (`MAX_DEPTH`), aliases are expanded within a node budget (`ALIAS_BUDGET`),
//! and only one document is accepted. Scalars keep their source text; the workflow reader types
//! them itself (a value like `3.10` stays `3.10`). Tags other than the core schema's are refused.

use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Tag};

use crate::error::Pos;

/// Deepest nesting of sequences and mappings accepted (a workflow needs about 8).
pub(crate) const MAX_DEPTH: usize = 64;
/// Nodes that alias expansion may add in total (defuses "billion laughs").
pub(crate) const ALIAS_BUDGET: usize = 10_000;

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Scalar { text: String, style: ScalarStyle },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A plain scalar that the YAML core schema reads as null (`~`, `null`, nothing).
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, style: ScalarStyle::Plain }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What the node is, for messages: "a string", "a list", "a mapping", "null".
    pub fn kind(&self) -> &'static str {
        match &self.value {
            _ if self.is_null() => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The key and value of a mapping's entry `name`.
    pub fn entry(&self, name: &str) -> Option<(&Node, &Node)> {
        let Value::Map(entries) = &self.value else {
            return None;
        };
        entries
            .iter()
            .find(|(k, _)| matches!(&k.value, Value::Scalar { text, .. } if text == name))
            .map(|(k, v)| (k, v))
    }

    /// Number of nodes and height of the tree under this node, walked without recursion.
    fn size(&self) -> (usize, usize) {
        let mut count = 0;
        let mut height = 0;
        let mut stack = vec![(self, 1)];
        while let Some((node, depth)) = stack.pop() {
            count += 1;
            height = height.max(depth);
            match &node.value {
                Value::Scalar { .. } => {}
                Value::Seq(items) => stack.extend(items.iter().map(|n| (n, depth + 1))),
                Value::Map(entries) => {
                    for (k, v) in entries {
                        stack.push((k, depth + 1));
                        stack.push((v, depth + 1));
                    }
                }
            }
        }
        (count, height)
    }
}

#[derive(Debug)]
pub(crate) struct LoadError {
    pub pos: Pos,
    pub message: String,
}

fn pos(marker: Marker) -> Pos {
    Pos {
        line: marker.line(),
        column: marker.col() + 1,
    }
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    /// anchor id → (node, node count, height)
    anchors: HashMap<usize, (Node, usize, usize)>,
    alias_budget: usize,
}

fn fail<T>(at: Pos, message: impl Into<String>) -> Result<T, LoadError> {
    Err(LoadError {
        pos: at,
        message: message.into(),
    })
}

fn check_tag(tag: Option<&Tag>, at: Pos, allowed: &str) -> Result<(), LoadError> {
    match tag {
        None => Ok(()),
        Some(tag) if tag.is_yaml_core_schema() && tag.suffix == allowed => Ok(()),
        Some(tag) if tag.is_yaml_core_schema() => fail(
            at,
            format!("YAML tags are not supported (found `!!{}`)", tag.suffix),
        ),
        Some(tag) => fail(
            at,
            format!(
                "YAML tags are not supported (found `{}{}`)",
                tag.handle, tag.suffix
            ),
        ),
    }
}

impl Builder {
    fn open(&self, at: Pos) -> Result<(), LoadError> {
        if self.stack.len() >= MAX_DEPTH {
            return fail(
                at,
                format!("YAML nesting is deeper than {MAX_DEPTH} levels"),
            );
        }
        Ok(())
    }

    fn insert(&mut self, node: Node, anchor: usize) -> Result<(), LoadError> {
        if anchor > 0 {
            let (count, height) = node.size();
            self.anchors.insert(anchor, (node.clone(), count, height));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => {
                    if !matches!(node.value, Value::Scalar { .. }) {
                        return fail(node.pos, "mapping keys must be strings");
                    }
                    *key = Some(node);
                }
            },
        }
        Ok(())
    }
}

/// Parses `source` into one tree. `Ok(None)` for a stream without a document (empty file).
pub(crate) fn load(source: &str) -> Result<Option<Node>, LoadError> {
    let mut builder = Builder {
        stack: Vec::new(),
        root: None,
        anchors: HashMap::new(),
        alias_budget: ALIAS_BUDGET,
    };
    let mut documents = 0;
    for event in Parser::new_from_str(source) {
        let (event, span) = event.map_err(|e| LoadError {
            pos: pos(*e.marker()),
            message: format!("invalid YAML: {}", e.info()),
        })?;
        let at = pos(span.start);
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return fail(at, "a workflow file must hold exactly one YAML document");
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                check_tag(tag.as_deref(), at, "str")?;
                let node = Node {
                    pos: at,
                    value: Value::Scalar {
                        text: text.into_owned(),
                        style,
                    },
                };
                builder.insert(node, anchor)?;
            }
            Event::SequenceStart(anchor, tag) => {
                check_tag(tag.as_deref(), at, "seq")?;
                builder.open(at)?;
                builder.stack.push(Frame::Seq {
                    pos: at,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, tag) => {
                check_tag(tag.as_deref(), at, "map")?;
                builder.open(at)?;
                builder.stack.push(Frame::Map {
                    pos: at,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match builder.stack.pop() {
                    Some(Frame::Seq { pos, anchor, items }) => (
                        Node {
                            pos,
                            value: Value::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        pos,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            pos,
                            value: Value::Map(entries),
                        },
                        anchor,
                    ),
                    None => return fail(at, "unbalanced YAML collection"),
                };
                builder.insert(node, anchor)?;
            }
            Event::Alias(id) => {
                let Some((node, count, height)) = builder.anchors.get(&id) else {
                    return fail(at, "unknown YAML anchor");
                };
                if *count > builder.alias_budget {
                    return fail(
                        at,
                        format!("YAML aliases expand to more than {ALIAS_BUDGET} nodes"),
                    );
                }
                if builder.stack.len() + height > MAX_DEPTH {
                    return fail(
                        at,
                        format!("YAML nesting is deeper than {MAX_DEPTH} levels"),
                    );
                }
                builder.alias_budget -= count;
                let node = node.clone();
                builder.insert(node, 0)?;
            }
        }
    }
    Ok(builder.root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(node: &Node) -> (&str, Pos) {
        match &node.value {
            Value::Scalar { text, .. } => (text, node.pos),
            _ => panic!("not a scalar: {node:?}"),
        }
    }

    #[test]
    fn positions_are_one_based() {
        let root = load("a: 1\nb:\n  - x\n  - |\n    line one\n    line two\n")
            .unwrap()
            .unwrap();
        let Value::Map(entries) = &root.value else {
            panic!()
        };
        assert_eq!(scalar(&entries[0].0), ("a", Pos { line: 1, column: 1 }));
        assert_eq!(scalar(&entries[0].1), ("1", Pos { line: 1, column: 4 }));
        let Value::Seq(items) = &entries[1].1.value else {
            panic!()
        };
        assert_eq!(scalar(&items[0]), ("x", Pos { line: 3, column: 5 }));
        // a block scalar starts where its content starts, not at its indicator
        assert_eq!(
            scalar(&items[1]),
            ("line one\nline two\n", Pos { line: 5, column: 5 })
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = "[".repeat(200_000);
        // the parser's own guard answers first for flow collections
        let err = load(&deep).unwrap_err();
        assert_eq!(err.message, "invalid YAML: recursion limit exceeded");
        let deep = "- ".repeat(200_000);
        let err = load(&deep).unwrap_err();
        assert_eq!(err.message, "YAML nesting is deeper than 64 levels");
        let deep = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        assert!(load(&deep).is_ok());
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            doc.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let err = load(&doc).unwrap_err();
        assert_eq!(err.message, "YAML aliases expand to more than 10000 nodes");
    }

    #[test]
    fn aliases_deeper_than_the_limit_are_refused() {
        let inner = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        let doc = format!(
            "a: &a {inner}\nb: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n"
        );
        let err = load(&doc).unwrap_err();
        assert_eq!(err.message, "YAML nesting is deeper than 64 levels");
    }

    #[test]
    fn tags_and_documents() {
        assert!(load("a: !!str 1").is_ok());
        assert_eq!(
            load("a: !custom 1").unwrap_err().message,
            "YAML tags are not supported (found `!custom`)"
        );
        assert_eq!(
            load("a: 1\n---\nb: 2\n").unwrap_err().message,
            "a workflow file must hold exactly one YAML document"
        );
        assert!(load("# only a comment\n").unwrap().is_none());
        assert_eq!(
            load("? [a]\n: 1\n").unwrap_err().message,
            "mapping keys must be strings"
        );
    }
}
