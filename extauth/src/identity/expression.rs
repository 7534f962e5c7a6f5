//! Boolean expressions over identity method names, as Gloo's `booleanExpr`:
//! `keys || (users && !legacy)`. Names resolve to method indexes at load; evaluation
//! short-circuits, so a method runs only when its result can change the answer.

#[derive(Clone, Debug, PartialEq)]
pub enum Expression {
    Method(usize),
    Not(Box<Expression>),
    And(Box<Expression>, Box<Expression>),
    Or(Box<Expression>, Box<Expression>),
}

impl Expression {
    /// Parses `text`; `resolve` maps a method name to its index.
    pub fn parse(text: &str, resolve: impl Fn(&str) -> Option<usize>) -> Result<Expression, String> {
        let tokens = tokenize(text)?;
        let mut parser = Parser { tokens, pos: 0, resolve: &resolve };
        let expr = parser.or()?;
        match parser.tokens.get(parser.pos) {
            None => Ok(expr),
            Some(t) => Err(format!("unexpected {t:?} in expression {text:?}")),
        }
    }

    /// `Ok(result)`, or `Err(i)` when method `i` must run first. `known[i]` is method i's
    /// result once it has run.
    pub fn evaluate(&self, known: &[Option<bool>]) -> Result<bool, usize> {
        match self {
            Expression::Method(i) => known.get(*i).copied().flatten().ok_or(*i),
            Expression::Not(e) => e.evaluate(known).map(|b| !b),
            Expression::And(a, b) => Ok(a.evaluate(known)? && b.evaluate(known)?),
            Expression::Or(a, b) => Ok(a.evaluate(known)? || b.evaluate(known)?),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Name(String),
    And,
    Or,
    Not,
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            '!' => tokens.push(Token::Not),
            '&' | '|' => {
                if chars.next().map(|(_, d)| d) != Some(c) {
                    return Err(format!("expected {c}{c} at offset {i} in expression {text:?}"));
                }
                tokens.push(if c == '&' { Token::And } else { Token::Or });
            }
            c if c.is_alphanumeric() || c == '_' || c == '-' => {
                let mut name = c.to_string();
                while let Some((_, d)) = chars.peek().copied() {
                    if d.is_alphanumeric() || d == '_' || d == '-' {
                        name.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Token::Name(name));
            }
            other => return Err(format!("unexpected {other:?} at offset {i} in expression {text:?}")),
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: Vec<Token>,
    pos: usize,
    resolve: &'a dyn Fn(&str) -> Option<usize>,
}

impl Parser<'_> {
    fn or(&mut self) -> Result<Expression, String> {
        let mut left = self.and()?;
        while self.eat(&Token::Or) {
            left = Expression::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expression, String> {
        let mut left = self.unary()?;
        while self.eat(&Token::And) {
            left = Expression::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expression, String> {
        if self.eat(&Token::Not) {
            return Ok(Expression::Not(Box::new(self.unary()?)));
        }
        if self.eat(&Token::Open) {
            let inner = self.or()?;
            if !self.eat(&Token::Close) {
                return Err("missing ')' in expression".into());
            }
            return Ok(inner);
        }
        match self.tokens.get(self.pos).cloned() {
            Some(Token::Name(name)) => {
                self.pos += 1;
                (self.resolve)(&name)
                    .map(Expression::Method)
                    .ok_or_else(|| format!("expression names {name:?}, which is not a method of this policy"))
            }
            Some(t) => Err(format!("unexpected {t:?} in expression")),
            None => Err("expression ends too early".into()),
        }
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.tokens.get(self.pos) == Some(token) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Expression, String> {
        Expression::parse(text, |n| ["keys", "users", "mesh"].iter().position(|m| *m == n))
    }

    #[test]
    fn precedence_and_short_circuit() {
        let e = parse("keys || users && !mesh").unwrap();
        // keys is unknown yet: it must run first.
        assert_eq!(e.evaluate(&[None, None, None]), Err(0));
        // keys succeeded: nothing else runs.
        assert_eq!(e.evaluate(&[Some(true), None, None]), Ok(true));
        assert_eq!(e.evaluate(&[Some(false), None, None]), Err(1));
        assert_eq!(e.evaluate(&[Some(false), Some(true), None]), Err(2));
        assert_eq!(e.evaluate(&[Some(false), Some(true), Some(true)]), Ok(false));
        assert_eq!(e.evaluate(&[Some(false), Some(true), Some(false)]), Ok(true));
        let grouped = parse("(keys || users) && mesh").unwrap();
        assert_eq!(grouped.evaluate(&[Some(true), None, Some(false)]), Ok(false));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            parse("keys || oidc").unwrap_err(),
            "expression names \"oidc\", which is not a method of this policy"
        );
        assert!(parse("keys & users").unwrap_err().starts_with("expected &&"));
        assert_eq!(parse("(keys").unwrap_err(), "missing ')' in expression");
        assert_eq!(parse("keys ||").unwrap_err(), "expression ends too early");
        assert!(parse("keys users").unwrap_err().starts_with("unexpected Name"));
    }
}
