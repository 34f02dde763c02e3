//! Command-line flags: `--name value` pairs read by name with a default. Flags are
//! checked against the scenario's list before it runs, so a typo never silently falls
//! back to a default.

use std::collections::BTreeMap;
use std::str::FromStr;

#[derive(Debug, Default)]
pub struct Args {
    values: BTreeMap<String, String>,
}

impl Args {
    /// Parses `--name value` pairs (`--name=value` too).
    pub fn parse(words: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut values = BTreeMap::new();
        let mut words = words.into_iter();
        while let Some(word) = words.next() {
            let Some(name) = word.strip_prefix("--") else {
                return Err(format!("unexpected argument `{word}`"));
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let value = words
                        .next()
                        .ok_or_else(|| format!("--{name} needs a value"))?;
                    (name.to_string(), value)
                }
            };
            if values.insert(name.clone(), value).is_some() {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(Args { values })
    }

    pub fn opt_str(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    pub fn str_or(&self, name: &str, default: &str) -> String {
        self.opt_str(name).unwrap_or_else(|| default.to_string())
    }

    pub fn required(&self, name: &str) -> Result<String, String> {
        self.opt_str(name)
            .ok_or_else(|| format!("--{name} is required"))
    }

    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.opt_str(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{name}: cannot use `{v}`")),
        }
    }

    /// Flags given that are in neither list.
    pub fn unknown(&self, common: &[&str], own: &[&str]) -> Vec<String> {
        self.values
            .keys()
            .filter(|k| !common.contains(&k.as_str()) && !own.contains(&k.as_str()))
            .map(|k| format!("--{k}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        Args::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn flags() {
        let a = args("--members 10 --rate=2.5 --label x").unwrap();
        assert_eq!(a.get("members", 1usize), Ok(10));
        assert_eq!(a.get("rate", 1.0f64), Ok(2.5));
        assert_eq!(a.get("senders", 3u32), Ok(3));
        assert_eq!(
            a.unknown(&["members"], &["rate"]),
            vec!["--label".to_string()]
        );
        assert!(a.get("label", 0u32).is_err());
        assert!(args("--members").is_err());
        assert!(args("members 1").is_err());
        assert!(args("--a 1 --a 2").is_err());
    }
}
