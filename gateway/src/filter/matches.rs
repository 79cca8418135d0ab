//! The interpreter's `matches` (CEL's `s.matches(re)` and `matches(s, re)`), in place of the
//! `cel` crate's, which compiles the pattern on every call, without a size limit: inside a
//! comprehension that is once per list item per record, and a pattern from the record itself
//! (`value.s.matches(value.p)`) could compile to the `regex` crate's 10 MiB default on every
//! record.
//!
//! Here a pattern is compiled within [`MAX_REGEX_BYTES`] and kept, with its error when it has
//! one, in a small cache per thread (filters run on the runtime and blocking-pool threads), so
//! an evaluation that meets the same pattern again, in the next item or record, does not
//! compile it again, and one that is too large fails at once every time after the first.
//! (Filters compiled to native predicates hold their literal pattern already:
//! [`super::compiled`].)

use std::cell::RefCell;
use std::collections::HashMap;

use cel::ExecutionError;
use cel::common::types::{CelBool, CelString};

use super::bounds::{MAX_REGEX_BYTES, limited_regex};

/// The most patterns one thread keeps compiled. Every compiled pattern is within
/// [`MAX_REGEX_BYTES`] (and its lazy DFA within as much again); a thread that meets more
/// distinct patterns starts its cache again.
const CACHED_PATTERNS: usize = 32;

/// Patterns longer than this are compiled each time, not kept (their text alone could make the
/// cache large).
const CACHED_PATTERN_BYTES: usize = 4096;

thread_local! {
    static PATTERNS: RefCell<HashMap<Box<str>, Result<regex::Regex, String>>> =
        RefCell::new(HashMap::new());
    #[cfg(test)]
    static COMPILED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Registers `matches` on `env` (whose `cel` crate is built without its own).
pub(super) fn register(env: &mut cel::Env) -> Result<(), cel::DeclarationError> {
    cel::add_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>, id = "matches")?;
    cel::add_member_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>)
}

fn matches(this: &CelString<'_>, re: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let found = with_pattern(re.inner(), |compiled| {
        compiled.map(|r| r.is_match(this.inner()))
    });
    match found {
        Ok(found) => Ok(CelBool::from(found)),
        Err(message) => Err(ExecutionError::FunctionError {
            function: "matches".to_string(),
            message,
        }),
    }
}

/// Runs `f` on `pattern` compiled (from this thread's cache when it is there), or on why it
/// cannot be.
fn with_pattern<T>(pattern: &str, f: impl FnOnce(Result<&regex::Regex, String>) -> T) -> T {
    if pattern.len() > CACHED_PATTERN_BYTES {
        let compiled = compile(pattern);
        return f(compiled.as_ref().map_err(Clone::clone));
    }
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(compiled) = cache.get(pattern) {
            return f(compiled.as_ref().map_err(Clone::clone));
        }
        if cache.len() >= CACHED_PATTERNS {
            cache.clear();
        }
        let compiled = cache.entry(pattern.into()).or_insert(compile(pattern));
        f(compiled.as_ref().map_err(Clone::clone))
    })
}

fn compile(pattern: &str) -> Result<regex::Regex, String> {
    #[cfg(test)]
    COMPILED.with(|n| n.set(n.get() + 1));
    limited_regex(pattern).map_err(|e| match e {
        regex::Error::CompiledTooBig(_) => format!(
            "the regular expression {pattern:?} is too large: it compiles to over {} KiB (the limit)",
            MAX_REGEX_BYTES / 1024
        ),
        other => format!("'{pattern}' not a valid regex:\n{other}"),
    })
}

/// How many patterns this thread has compiled.
#[cfg(test)]
pub(super) fn compiled_here() -> usize {
    COMPILED.with(std::cell::Cell::get)
}
