//! `strategy.matrix`: axes, `exclude` and `include` expanded as GitHub does.
//!
//! 1. The product of the axes, the first axis varying slowest.
//! 2. `exclude` removes every combination that has all of an entry's key/value pairs.
//! 3. Each `include` entry is added to every original combination whose original values it does
//!    not change (values added by an earlier entry may be overwritten); an entry that fits no
//!    original combination becomes a combination of its own.
//!
//! Values are compared as written (`18` and `"18"` are equal, `3.10` and `3.1` are not).

/// A matrix as written in the workflow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Matrix {
    /// `key: [values]`, in file order.
    pub axes: Vec<(String, Vec<String>)>,
    pub include: Vec<Vec<(String, String)>>,
    pub exclude: Vec<Vec<(String, String)>>,
}

/// One combination: key/value pairs, axes first (in file order), then keys added by `include`.
pub type Combination = Vec<(String, String)>;

fn get<'a>(combination: &'a [(String, String)], key: &str) -> Option<&'a str> {
    combination
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Matrix {
    /// Every key a combination may have (axes and `include` keys).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.axes
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(self.include.iter().flatten().map(|(k, _)| k.as_str()))
    }

    /// The combinations, or the number they would reach when that is over `limit`.
    pub fn combinations(&self, limit: usize) -> Result<Vec<Combination>, usize> {
        let product = self
            .axes
            .iter()
            .fold(1usize, |n, (_, values)| n.saturating_mul(values.len()));
        if !self.axes.is_empty() && product > limit {
            return Err(product);
        }
        let mut originals: Vec<Combination> = if self.axes.is_empty() {
            Vec::new()
        } else {
            vec![Vec::new()]
        };
        for (key, values) in &self.axes {
            originals = originals
                .iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((key.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        originals.retain(|c| {
            !self
                .exclude
                .iter()
                .any(|entry| entry.iter().all(|(k, v)| get(c, k) == Some(v)))
        });
        let n_axes = self.axes.len();
        let mut extra: Vec<Combination> = Vec::new();
        for entry in &self.include {
            let mut fitted = false;
            for combination in &mut originals {
                let fits = entry
                    .iter()
                    .all(|(k, v)| match get(&combination[..n_axes], k) {
                        Some(original) => original == v,
                        None => true,
                    });
                if !fits {
                    continue;
                }
                fitted = true;
                for (k, v) in entry {
                    match combination.iter_mut().find(|(ck, _)| ck == k) {
                        Some(slot) => slot.1 = v.clone(),
                        None => combination.push((k.clone(), v.clone())),
                    }
                }
            }
            if !fitted {
                extra.push(entry.clone());
            }
            if originals.len() + extra.len() > limit {
                return Err(originals.len() + extra.len());
            }
        }
        originals.extend(extra);
        Ok(originals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn axis(key: &str, values: &[&str]) -> (String, Vec<String>) {
        (
            key.to_owned(),
            values.iter().map(|v| v.to_string()).collect(),
        )
    }

    fn show(combinations: &[Combination]) -> Vec<String> {
        combinations
            .iter()
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    // The example of GitHub's documentation, "Expanding or adding matrix configurations".
    #[test]
    fn include_follows_github() {
        let matrix = Matrix {
            axes: vec![
                axis("fruit", &["apple", "pear"]),
                axis("animal", &["cat", "dog"]),
            ],
            include: vec![
                pairs(&[("color", "green")]),
                pairs(&[("color", "pink"), ("animal", "cat")]),
                pairs(&[("fruit", "apple"), ("shape", "circle")]),
                pairs(&[("fruit", "banana")]),
                pairs(&[("fruit", "banana"), ("animal", "cat")]),
            ],
            exclude: vec![],
        };
        assert_eq!(
            show(&matrix.combinations(256).unwrap()),
            [
                "fruit=apple,animal=cat,color=pink,shape=circle",
                "fruit=apple,animal=dog,color=green,shape=circle",
                "fruit=pear,animal=cat,color=pink",
                "fruit=pear,animal=dog,color=green",
                "fruit=banana",
                "fruit=banana,animal=cat",
            ]
        );
    }

    #[test]
    fn exclude_then_include_only_and_limits() {
        let matrix = Matrix {
            axes: vec![axis("os", &["linux", "macos"]), axis("v", &["1", "2"])],
            include: vec![],
            exclude: vec![pairs(&[("os", "macos"), ("v", "1")])],
        };
        assert_eq!(
            show(&matrix.combinations(256).unwrap()),
            ["os=linux,v=1", "os=linux,v=2", "os=macos,v=2"]
        );
        let only_include = Matrix {
            include: vec![pairs(&[("a", "1")]), pairs(&[("b", "2")])],
            ..Matrix::default()
        };
        assert_eq!(
            show(&only_include.combinations(256).unwrap()),
            ["a=1", "b=2"]
        );
        let big = Matrix {
            axes: vec![axis("a", &["x"; 100]), axis("b", &["y"; 100])],
            ..Matrix::default()
        };
        assert_eq!(big.combinations(256).unwrap_err(), 10_000);
        let grows = Matrix {
            include: vec![pairs(&[("a", "1")]); 300],
            ..Matrix::default()
        };
        assert_eq!(grows.combinations(256).unwrap_err(), 257);
    }
}
