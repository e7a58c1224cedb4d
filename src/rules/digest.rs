//! The CEL helpers `sha256(value)` and `hmac('<key name>', value)`: a pseudonymous id in a business event (a
//! customer's hashed email instead of the email). Both take a string (its UTF-8 bytes) or bytes and give the
//! lowercase hex digest, as `changes.masking`'s `hash` does (one implementation: [`crate::encode::mask`]).
//!
//! `sha256` is unkeyed (anyone can hash a guessed email and compare); `hmac` is keyed by a secret of
//! `event_defaults.hmac_keys`, named by a string literal that is checked when the rules are compiled. The cel
//! crate's environment functions are plain function pointers, so the keys cannot live there: `hmac` is a function
//! of each evaluation's context, added only when a rule calls it.

use std::collections::BTreeMap;

use cel::common::types::{CelBytes, BYTES_TYPE, STRING_TYPE};
use cel::common::value::CowVal;
use cel::extractors::Arguments;
use cel::ExecutionError;

use super::*;
use crate::config::masking::Secret;
use crate::encode::mask::{hex, hmac_sha256};

/// The name of the keyed helper.
pub(super) const HMAC: &str = "hmac";

/// Declares `sha256(string)` and `sha256(bytes)` in `env`.
pub(super) fn add_sha256(env: &mut Env) -> Result<(), cel::DeclarationError> {
    env.add_overload("sha256", "sha256_string", vec![STRING_TYPE], sha256)?;
    env.add_overload("sha256", "sha256_bytes", vec![BYTES_TYPE], sha256)
}

fn sha256<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    use sha2::{Digest, Sha256};
    match args.as_slice() {
        [value] => {
            let digest = Sha256::digest(input_bytes("sha256", value.as_ref())?);
            Ok(CowVal::owned(CelString::from(hex(&digest))))
        }
        _ => Err(ExecutionError::invalid_argument_count(1, args.len())),
    }
}

/// The bytes a helper digests: a string's UTF-8, or bytes as they are.
fn input_bytes<'a>(function: &str, value: &'a dyn Val) -> Result<&'a [u8], ExecutionError> {
    if let Some(s) = value.downcast_ref::<CelString>() {
        return Ok(s.inner().as_bytes());
    }
    if let Some(b) = value.downcast_ref::<CelBytes>() {
        return Ok(b.inner());
    }
    Err(ExecutionError::function_error(
        function,
        format!("takes a string or bytes, got {} (convert it, e.g. string(new.id))", value.get_type().name()),
    ))
}

/// The secrets of `event_defaults.hmac_keys` (never printed: `Secret`'s `Debug` is `***`).
#[derive(Debug, Default)]
pub(super) struct HmacKeys(BTreeMap<String, Secret>);

impl HmacKeys {
    pub(super) fn new(keys: &BTreeMap<String, Secret>) -> HmacKeys {
        HmacKeys(keys.clone())
    }

    /// Adds `hmac` to one evaluation's context.
    pub(super) fn add_to(self: &Arc<Self>, ctx: &mut Context<'_, '_>) {
        let keys = self.clone();
        let hmac = move |Arguments(args): Arguments| -> Result<Value, ExecutionError> {
            let [name, value] = args.as_slice() else {
                return Err(ExecutionError::invalid_argument_count(2, args.len()));
            };
            let Value::String(name) = name else {
                return Err(ExecutionError::function_error(HMAC, "the first argument names a key of hmac_keys"));
            };
            // Compile time checked the literal names; this only fails for a computed name.
            let Some(Secret(secret)) = keys.0.get(name.as_str()) else {
                return Err(ExecutionError::function_error(HMAC, format!("no key {name} in event_defaults.hmac_keys")));
            };
            let message: &[u8] = match value {
                Value::String(s) => s.as_bytes(),
                Value::Bytes(b) => b.as_slice(),
                other => {
                    return Err(ExecutionError::function_error(
                        HMAC,
                        format!("takes a string or bytes, got {:?} (convert it, e.g. string(new.id))", other.type_of()),
                    ))
                }
            };
            Ok(Value::String(Arc::new(hex(&hmac_sha256(secret.as_bytes(), message)))))
        };
        // `hmac` is not declared in the environment (checked by the tests), so adding it cannot conflict.
        let _ = ctx.add_function(HMAC, hmac);
    }

    /// Checks every `hmac(...)` call of `expr`: two arguments, the first a string literal naming a configured key.
    /// Returns whether `expr` calls `hmac`.
    pub(super) fn check(&self, expr: &Expr, key: &str) -> Result<bool, ConfigError> {
        let mut found = false;
        let mut error = None;
        visit_calls(expr, &mut |call| {
            if call.func_name != HMAC || error.is_some() {
                return;
            }
            found = true;
            let name = match (call.target.is_some(), call.args.as_slice()) {
                (false, [name, _]) => match &name.expr {
                    Expr::Literal(cel::common::ast::LiteralValue::String(s)) => Some(s.inner().to_string()),
                    _ => None,
                },
                _ => None,
            };
            error = match name {
                None => Some(ConfigError::invalid(
                    key,
                    "call hmac as hmac('<key name>', value), the key name a string of event_defaults.hmac_keys",
                )),
                Some(name) if !self.0.contains_key(&name) => Some(ConfigError::invalid(
                    key,
                    format!(
                        "hmac key {name:?} is not configured: add it to event_defaults.hmac_keys, e.g. \
                         {name}: ${{file:/run/secrets/{name}-key}}"
                    ),
                )),
                Some(_) => None,
            };
        });
        error.map_or(Ok(found), Err)
    }
}

/// Calls `f` on every function call in `expr`.
fn visit_calls(expr: &Expr, f: &mut dyn FnMut(&cel::common::ast::CallExpr)) {
    let mut children: Vec<&Expr> = Vec::new();
    match expr {
        Expr::Call(c) => {
            f(c);
            children.extend(c.target.iter().map(|t| &t.expr));
            children.extend(c.args.iter().map(|a| &a.expr));
        }
        Expr::Select(s) => children.push(&s.operand.expr),
        Expr::Comprehension(c) => {
            children.extend([&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result].map(|x| &x.expr))
        }
        Expr::List(l) => children.extend(l.elements.iter().map(|x| &x.expr)),
        Expr::Map(m) => m.entries.iter().for_each(|e| push_entry(&e.expr, &mut children)),
        Expr::Struct(s) => s.entries.iter().for_each(|e| push_entry(&e.expr, &mut children)),
        _ => {}
    }
    for child in children {
        visit_calls(child, f);
    }
}

fn push_entry<'a>(e: &'a EntryExpr, children: &mut Vec<&'a Expr>) {
    match e {
        EntryExpr::StructField(f) => children.push(&f.value.expr),
        EntryExpr::MapEntry(m) => children.extend([&m.key.expr, &m.value.expr]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Arc<HmacKeys> {
        let mut map = BTreeMap::new();
        // RFC 4231 test case 2: key "Jefe".
        map.insert("jefe".to_string(), Secret("Jefe".into()));
        map.insert("rfc4231-1".to_string(), Secret(String::from_utf8(vec![0x0b; 20]).unwrap()));
        Arc::new(HmacKeys::new(&map))
    }

    fn eval(source: &str) -> Result<Value, String> {
        let env = Arc::new(environment());
        let program = env.compile(source).map_err(|e| e.to_string())?;
        let keys = keys();
        keys.check(&program.expression().expr, "events[0].data.x").map_err(|e| e.to_string())?;
        let mut ctx = Context::with_env(env.clone());
        keys.add_to(&mut ctx);
        program.execute(&ctx).map_err(|e| e.to_string())
    }

    fn text(s: &str) -> Result<Value, String> {
        Ok(Value::String(Arc::new(s.to_string())))
    }

    /// NIST FIPS 180-2 examples (SHA-256 of "abc", of the 448-bit message, and of the empty string).
    #[test]
    fn sha256_matches_nist_vectors() {
        assert_eq!(eval("sha256('abc')"), text("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
        assert_eq!(
            eval("sha256('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq')"),
            text("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        );
        assert_eq!(eval("sha256(b'')"), text("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
        assert_eq!(eval("sha256(b'abc')"), eval("sha256('abc')"));
        let err = eval("sha256(42)").unwrap_err();
        assert!(err.contains("sha256"), "{err}");
    }

    /// RFC 4231 test cases 1 and 2.
    #[test]
    fn hmac_matches_rfc_4231_vectors() {
        assert_eq!(
            eval("hmac('rfc4231-1', 'Hi There')"),
            text("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        );
        assert_eq!(
            eval("hmac('jefe', b'what do ya want for nothing?')"),
            text("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        assert_eq!(
            eval("hmac('jefe', 'what do ya want ' + 'for nothing?')"),
            text("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn hmac_calls_are_checked_when_compiling() {
        let err = eval("hmac('customer', 'x')").unwrap_err();
        assert!(
            err.contains("events[0].data.x")
                && err.contains("\"customer\"")
                && err.contains("event_defaults.hmac_keys"),
            "{err}"
        );
        let err = eval("hmac('jefe' + '', 'x')").unwrap_err();
        assert!(err.contains("hmac('<key name>', value)"), "{err}");
        let err = eval("'x'.hmac('jefe')").unwrap_err();
        assert!(err.contains("hmac('<key name>', value)"), "{err}");
        assert!(!format!("{:?}", keys()).contains("Jefe"), "the secrets are never printed");
    }
}
