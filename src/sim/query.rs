//! The WSAPI query language (docs/simulator.md, "Queries"): `(<path> <op> <value>)` combined
//! only pairwise with AND / OR, e.g. `((Build = "b 1") AND (Verdict = Pass))`. Operators: `=`,
//! `!=`, `<`, `<=`, `>`, `>=`, `contains`, `!contains`, `in`, `!in`. Values may be quoted
//! (`"a b"`) or bare; `null`, booleans and relative refs (`/testcase/123`) are understood. Parse
//! errors use Rally's wording: `Could not parse: ...`.

use std::cmp::Ordering;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cond {
        path: Vec<String>,
        op: Op,
        value: Literal,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    NotContains,
    In,
    NotIn,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    /// The text as written, quotes removed.
    Text(String),
}

/// Parses a query string (already percent-decoded once).
pub fn parse(input: &str) -> Result<Expr, String> {
    let mut p = Parser {
        s: input.as_bytes(),
        i: 0,
        text: input,
    };
    p.ws();
    let e = p.expr(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!(
            "Could not parse: Unexpected text \"{}\" after the query",
            &input[p.i..]
        ));
    }
    Ok(e)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        match self.peek() {
            Some(x) if x == c => {
                self.i += 1;
                Ok(())
            }
            Some(x) => Err(format!(
                "Could not parse: Expected \"{}\" but found \"{}\"",
                c as char, x as char
            )),
            None => Err(format!(
                "Could not parse: Expected \"{}\" at the end of the query",
                c as char
            )),
        }
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, String> {
        if depth > MAX_DEPTH {
            return Err("Could not parse: query nested too deeply".into());
        }
        self.expect(b'(')?;
        self.ws();
        if self.peek() == Some(b'(') {
            let left = self.expr(depth + 1)?;
            self.ws();
            let word = self.word();
            let combine = match word.to_ascii_uppercase().as_str() {
                "AND" => Expr::And as fn(Box<Expr>, Box<Expr>) -> Expr,
                "OR" => Expr::Or,
                "" => {
                    let rest = self.text.get(self.i..self.i + 1).unwrap_or("");
                    return Err(format!("Could not parse: Unknown operator \"{rest}\""));
                }
                other => return Err(format!("Could not parse: Unknown operator \"{other}\"")),
            };
            let right = self.expr(depth + 1)?;
            self.expect(b')')?;
            return Ok(combine(Box::new(left), Box::new(right)));
        }
        // A condition: <path> <op> <value>
        let lhs = self.word();
        if lhs.is_empty() {
            let rest = self.text.get(self.i..self.i + 1).unwrap_or("");
            return Err(format!("Could not parse: Unknown operator \"{rest}\""));
        }
        self.ws();
        let op_word = self.word();
        let op = match op_word.to_ascii_lowercase().as_str() {
            "=" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "contains" => Op::Contains,
            "!contains" => Op::NotContains,
            "in" => Op::In,
            "!in" => Op::NotIn,
            "" => {
                let rest = self.text.get(self.i..self.i + 1).unwrap_or("");
                return Err(format!("Could not parse: Unknown operator \"{rest}\""));
            }
            other => return Err(format!("Could not parse: Unknown operator \"{other}\"")),
        };
        self.ws();
        let value = self.value()?;
        self.expect(b')')?;
        let path = lhs.split('.').map(str::to_string).collect();
        Ok(Expr::Cond { path, op, value })
    }

    /// A run of non-space characters that are not parentheses.
    fn word(&mut self) -> String {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() || c == b'(' || c == b')' {
                break;
            }
            self.i += 1;
        }
        self.text[start..self.i].to_string()
    }

    fn value(&mut self) -> Result<Literal, String> {
        if self.peek() == Some(b'"') {
            self.i += 1;
            let start = self.i;
            // No escape mechanism is documented (docs/simulator.md): a quote ends the value.
            while let Some(c) = self.peek() {
                if c == b'"' {
                    let v = self.text[start..self.i].to_string();
                    self.i += 1;
                    return Ok(Literal::Text(v));
                }
                self.i += 1;
            }
            return Err("Could not parse: Unterminated quoted value".into());
        }
        // Bare value: up to the closing parenthesis; spaces are not allowed inside.
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == b')' {
                break;
            }
            self.i += 1;
        }
        let raw = self.text[start..self.i].trim_end();
        if raw.is_empty() {
            return Err("Could not parse: Unknown operator \")\"".into());
        }
        if raw.contains(char::is_whitespace) {
            return Err(format!(
                "Could not parse: Error parsing expression -- expected \")\" but saw \"{}\" instead.",
                raw.split_whitespace().nth(1).unwrap_or("")
            ));
        }
        if raw.eq_ignore_ascii_case("null") {
            return Ok(Literal::Null);
        }
        Ok(Literal::Text(raw.to_string()))
    }
}

impl Expr {
    /// Every attribute path the query names (for the "unknown attribute" check).
    pub fn paths(&self) -> Vec<&[String]> {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                let mut v = a.paths();
                v.extend(b.paths());
                v
            }
            Expr::Cond { path, .. } => vec![path.as_slice()],
        }
    }
}

/// A value seen on an object, as the evaluator compares it.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Null,
    Text(String),
    Number(f64),
    Bool(bool),
    /// A reference: type path (lower case) and object id.
    Ref(String, i64),
}

/// Evaluates `expr`; `lookup` resolves an attribute path on the candidate object.
pub fn eval(expr: &Expr, lookup: &dyn Fn(&[String]) -> Seen) -> bool {
    match expr {
        Expr::And(a, b) => eval(a, lookup) && eval(b, lookup),
        Expr::Or(a, b) => eval(a, lookup) || eval(b, lookup),
        Expr::Cond { path, op, value } => compare(&lookup(path), *op, value),
    }
}

fn compare(seen: &Seen, op: Op, lit: &Literal) -> bool {
    match op {
        Op::Eq => equals(seen, lit),
        Op::Ne => !equals(seen, lit),
        Op::In | Op::NotIn => {
            let Literal::Text(list) = lit else {
                return matches!(seen, Seen::Null) == (op == Op::In);
            };
            let any = list
                .split(',')
                .map(|v| Literal::Text(v.trim().trim_matches('"').to_string()))
                .any(|v| equals(seen, &v));
            any == (op == Op::In)
        }
        Op::Contains | Op::NotContains => {
            let hay = match seen {
                Seen::Text(s) => s.to_lowercase(),
                Seen::Null => String::new(),
                Seen::Number(n) => n.to_string(),
                Seen::Bool(b) => b.to_string(),
                Seen::Ref(t, o) => format!("/{t}/{o}"),
            };
            let needle = match lit {
                Literal::Null => return op == Op::NotContains,
                Literal::Text(t) => t.to_lowercase(),
            };
            hay.contains(&needle) == (op == Op::Contains)
        }
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let Some(ord) = order(seen, lit) else {
                return false;
            };
            match op {
                Op::Lt => ord == Ordering::Less,
                Op::Le => ord != Ordering::Greater,
                Op::Gt => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            }
        }
    }
}

fn equals(seen: &Seen, lit: &Literal) -> bool {
    match (seen, lit) {
        (Seen::Null, Literal::Null) => true,
        (Seen::Null, Literal::Text(t)) => t.is_empty(),
        (_, Literal::Null) => false,
        (Seen::Text(s), Literal::Text(t)) => {
            if s == t {
                return true;
            }
            // Dates compare as instants, whatever precision or zone was written.
            match (super::model::parse_date(s), super::model::parse_date(t)) {
                (Some(a), Some(b)) => a == b && s.contains('T') && t.contains('-'),
                _ => false,
            }
        }
        (Seen::Number(n), Literal::Text(t)) => t.parse::<f64>().is_ok_and(|x| x == *n),
        (Seen::Bool(b), Literal::Text(t)) => {
            t.eq_ignore_ascii_case(if *b { "true" } else { "false" })
        }
        (Seen::Ref(ty, oid), Literal::Text(t)) => {
            let t = t.split('?').next().unwrap_or(t);
            let segs: Vec<&str> = t.split('/').filter(|s| !s.is_empty()).collect();
            match segs.as_slice() {
                [.., tty, id] => {
                    tty.eq_ignore_ascii_case(ty)
                        && crate::wsapi::strip_js(id).parse::<i64>().ok() == Some(*oid)
                }
                [id] => id.parse::<i64>().ok() == Some(*oid),
                _ => false,
            }
        }
    }
}

fn order(seen: &Seen, lit: &Literal) -> Option<Ordering> {
    let Literal::Text(t) = lit else { return None };
    match seen {
        Seen::Number(n) => n.partial_cmp(&t.parse::<f64>().ok()?),
        Seen::Text(s) => {
            if let (Some(a), Some(b)) = (super::model::parse_date(s), parse_date_or_today(t)) {
                return Some(a.cmp(&b));
            }
            Some(s.as_str().cmp(t.as_str()))
        }
        _ => None,
    }
}

fn parse_date_or_today(t: &str) -> Option<time::OffsetDateTime> {
    if t.eq_ignore_ascii_case("today") {
        let now = time::OffsetDateTime::now_utc();
        return Some(now.date().midnight().assume_utc());
    }
    super::model::parse_date(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(path: &str, op: Op, v: &str) -> Expr {
        Expr::Cond {
            path: path.split('.').map(str::to_string).collect(),
            op,
            value: Literal::Text(v.into()),
        }
    }

    #[test]
    fn parses_pairwise_nesting_and_quotes() {
        let e = parse(r#"((Build = "b 1") AND (Verdict = Pass))"#).expect("parse");
        assert_eq!(
            e,
            Expr::And(
                Box::new(cond("Build", Op::Eq, "b 1")),
                Box::new(cond("Verdict", Op::Eq, "Pass"))
            )
        );
        let e =
            parse("(((A = 1) AND (B != 2)) OR (TestCase.FormattedID contains tc))").expect("parse");
        assert!(matches!(e, Expr::Or(_, _)));
        assert_eq!(
            parse("(Owner = null)").expect("null"),
            Expr::Cond {
                path: vec!["Owner".into()],
                op: Op::Eq,
                value: Literal::Null
            }
        );
        assert_eq!(
            parse(r#"(Name = "(x) AND (y)")"#).expect("quoted"),
            cond("Name", Op::Eq, "(x) AND (y)")
        );
    }

    #[test]
    fn errors_use_rallys_wording() {
        assert_eq!(
            parse("(Name = )").expect_err("err"),
            "Could not parse: Unknown operator \")\""
        );
        assert!(
            parse("((A = 1) AND (B = 2) AND (C = 3))").is_err(),
            "flat AND is invalid"
        );
        assert!(parse("(Name = a b)").is_err(), "spaces need quotes");
        assert!(
            parse("(Name ~ a)")
                .expect_err("op")
                .contains("Unknown operator \"~\"")
        );
        assert!(parse("(A = 1").is_err());
        assert!(parse(&"(".repeat(500)).is_err());
    }

    #[test]
    fn evaluates_operators() {
        let look = |p: &[String]| match p[0].as_str() {
            "Verdict" => Seen::Text("Pass".into()),
            "Duration" => Seen::Number(2.5),
            "TestCase" => Seen::Ref("testcase".into(), 1001),
            "Date" => Seen::Text("2024-05-01T10:00:00.000Z".into()),
            _ => Seen::Null,
        };
        let t = |q: &str| eval(&parse(q).expect(q), &look);
        assert!(t("(Verdict = Pass)"));
        assert!(!t("(Verdict = pass)"), "values are case-sensitive");
        assert!(t("(Verdict contains pa)"));
        assert!(t("(Verdict in Fail,Pass)"));
        assert!(t("(Verdict !in Fail,Error)"));
        assert!(t("(Duration > 2)"));
        assert!(t("(Duration <= 2.5)"));
        assert!(t("(TestCase = /testcase/1001)"));
        assert!(t(
            "(TestCase = \"https://h/slm/webservice/v2.0/testcase/1001\")"
        ));
        assert!(t("(Owner = null)"));
        assert!(t("(Date = \"2024-05-01T10:00:00Z\")"));
        assert!(t("(Date > 2024-04-30)"));
        assert!(t("((Verdict = Fail) OR (Duration >= 2.5))"));
        assert!(!t("((Verdict = Fail) AND (Duration >= 2.5))"));
    }
}
