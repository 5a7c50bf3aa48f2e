//! `google.api.http` path templates: parsing and matching.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```

use std::{cmp::Ordering, fmt};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Single,
    /// `**`: zero or more segments; only last.
    Multi,
}

/// A variable binding segments `start..end` (or `start..` when it ends in
/// `**`) to a dotted field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub field_path: Vec<String>,
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
    verb: Option<String>,
    variables: Vec<Variable>,
}

/// A matched variable: field path and percent-decoded value.
pub type Binding = (Vec<String>, String);

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, String> {
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| format!("template `{template}` must start with `/`"))?;
        let mut parser = Parser {
            rest,
            segments: Vec::new(),
            variables: Vec::new(),
        };
        parser.segments_until(None)?;
        let verb = match parser.rest.strip_prefix(':') {
            Some(verb) if is_literal(verb) => Some(verb.to_owned()),
            Some(_) => return Err(format!("template `{template}` has an invalid verb")),
            None if parser.rest.is_empty() => None,
            None => {
                return Err(format!(
                    "template `{template}` has trailing `{}`",
                    parser.rest
                ));
            }
        };
        let segments = parser.segments;
        if let Some(pos) = segments.iter().position(|s| *s == Segment::Multi)
            && pos + 1 != segments.len()
        {
            return Err(format!(
                "template `{template}`: `**` must be the last segment"
            ));
        }
        let mut names: Vec<&Vec<String>> = parser.variables.iter().map(|v| &v.field_path).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(format!("template `{template}` binds a field twice"));
        }
        Ok(Self {
            source: template.to_owned(),
            segments,
            verb,
            variables: parser.variables,
        })
    }

    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// Matches a request path (no query string); returns the variable
    /// bindings, percent-decoded.
    pub fn matches(&self, path: &str) -> Option<Vec<Binding>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        let multi = self.segments.last() == Some(&Segment::Multi);
        let fixed = self.segments.len() - usize::from(multi);
        if parts.len() < fixed || (!multi && parts.len() != fixed) {
            return None;
        }
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(lit) if lit != part => return None,
                Segment::Single if part.is_empty() => return None,
                _ => {}
            }
        }
        let mut bindings = Vec::with_capacity(self.variables.len());
        for var in &self.variables {
            let end = if var.end == usize::MAX {
                parts.len()
            } else {
                var.end
            };
            let decoded: Vec<String> = parts[var.start..end].iter().map(|p| decode(p)).collect();
            bindings.push((var.field_path.clone(), decoded.join("/")));
        }
        Some(bindings)
    }

    /// Orders templates from most to least specific: literals before `*`
    /// before `**`, compared segment by segment; a verb is more specific.
    pub fn specificity_cmp(&self, other: &Self) -> Ordering {
        let rank = |s: &Segment| match s {
            Segment::Literal(_) => 0,
            Segment::Single => 1,
            Segment::Multi => 2,
        };
        let a = self.segments.iter().map(rank);
        let b = other.segments.iter().map(rank);
        a.cmp(b)
            .then_with(|| other.verb.is_some().cmp(&self.verb.is_some()))
            .then_with(|| other.segments.len().cmp(&self.segments.len()))
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn decode(part: &str) -> String {
    percent_encoding::percent_decode_str(part)
        .decode_utf8_lossy()
        .into_owned()
}

fn is_literal(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~%!$&'()+,;@".contains(c))
}

struct Parser<'a> {
    rest: &'a str,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl Parser<'_> {
    /// Parses `Segment { "/" Segment }`, stopping before `stop` (the `}` of
    /// a variable) or a verb / end of input.
    fn segments_until(&mut self, stop: Option<char>) -> Result<(), String> {
        loop {
            self.segment(stop.is_some())?;
            match self.rest.chars().next() {
                Some('/') => self.rest = &self.rest[1..],
                Some(c) if Some(c) == stop => return Ok(()),
                None | Some(':') if stop.is_none() => return Ok(()),
                Some(c) => return Err(format!("unexpected `{c}` in template")),
                None => return Err("unterminated variable".to_owned()),
            }
        }
    }

    fn segment(&mut self, in_variable: bool) -> Result<(), String> {
        if let Some(rest) = self.rest.strip_prefix("**") {
            self.rest = rest;
            self.segments.push(Segment::Multi);
        } else if let Some(rest) = self.rest.strip_prefix('*') {
            self.rest = rest;
            self.segments.push(Segment::Single);
        } else if let Some(rest) = self.rest.strip_prefix('{') {
            if in_variable {
                return Err("nested variables are not allowed".to_owned());
            }
            self.rest = rest;
            self.variable()?;
        } else {
            let end = self
                .rest
                .find(['/', ':', '}', '{', '*'])
                .unwrap_or(self.rest.len());
            let literal = &self.rest[..end];
            if !is_literal(literal) {
                return Err(format!("invalid literal segment `{literal}`"));
            }
            self.segments.push(Segment::Literal(literal.to_owned()));
            self.rest = &self.rest[end..];
        }
        Ok(())
    }

    fn variable(&mut self) -> Result<(), String> {
        let end = self.rest.find(['=', '}']).ok_or("unterminated variable")?;
        let path = &self.rest[..end];
        let field_path: Vec<String> = path.split('.').map(str::to_owned).collect();
        if field_path
            .iter()
            .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(format!("invalid field path `{path}`"));
        }
        let start = self.segments.len();
        self.rest = &self.rest[end..];
        if let Some(rest) = self.rest.strip_prefix('=') {
            self.rest = rest;
            self.segments_until(Some('}'))?;
        } else {
            self.segments.push(Segment::Single);
        }
        self.rest = &self.rest[1..]; // the closing `}`
        let end = if self.segments.last() == Some(&Segment::Multi) {
            usize::MAX
        } else {
            self.segments.len()
        };
        self.variables.push(Variable {
            field_path,
            start,
            end,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse(s).unwrap()
    }

    #[test]
    fn simple_variable() {
        let b = t("/api/v1/tenants/{id}")
            .matches("/api/v1/tenants/abc")
            .unwrap();
        assert_eq!(b, vec![(vec!["id".to_owned()], "abc".to_owned())]);
        assert!(
            t("/api/v1/tenants/{id}")
                .matches("/api/v1/tenants")
                .is_none()
        );
        assert!(
            t("/api/v1/tenants/{id}")
                .matches("/api/v1/tenants/a/b")
                .is_none()
        );
        assert!(
            t("/api/v1/tenants/{id}")
                .matches("/api/v1/tenants/")
                .is_none()
        );
    }

    #[test]
    fn percent_decoding_and_dotted_paths() {
        let b = t("/v1/shelves/{book.shelf}/books/{book.id}")
            .matches("/v1/shelves/a%20b/books/7")
            .unwrap();
        assert_eq!(
            b[0],
            (
                vec!["book".to_owned(), "shelf".to_owned()],
                "a b".to_owned()
            )
        );
        assert_eq!(b[1].1, "7");
    }

    #[test]
    fn variable_with_pattern_captures_segments() {
        let b = t("/v1/{name=shelves/*/books/*}")
            .matches("/v1/shelves/s1/books/b2")
            .unwrap();
        assert_eq!(b[0].1, "shelves/s1/books/b2");
        assert!(
            t("/v1/{name=shelves/*/books/*}")
                .matches("/v1/shelves/s1/cds/b2")
                .is_none()
        );
    }

    #[test]
    fn double_wildcard_takes_the_rest() {
        let tpl = t("/v1/files/{path=**}");
        assert_eq!(
            tpl.matches("/v1/files/a/b/c.txt").unwrap()[0].1,
            "a/b/c.txt"
        );
        assert_eq!(tpl.matches("/v1/files").unwrap()[0].1, "");
        assert!(PathTemplate::parse("/v1/{a=**}/x").is_err());
    }

    #[test]
    fn verbs() {
        let tpl = t("/v1/shelves/{shelf}:archive");
        assert_eq!(tpl.matches("/v1/shelves/s1:archive").unwrap()[0].1, "s1");
        assert!(tpl.matches("/v1/shelves/s1").is_none());
        // Without the verb the colon is part of the value; the router prefers
        // the verb binding when both match (see specificity_cmp).
        assert_eq!(
            t("/v1/shelves/{shelf}")
                .matches("/v1/shelves/s1:x")
                .unwrap()[0]
                .1,
            "s1:x"
        );
        assert_eq!(
            tpl.specificity_cmp(&t("/v1/shelves/{shelf}")),
            Ordering::Less
        );
    }

    #[test]
    fn literal_beats_variable() {
        let lit = t("/api/v1/tenants/dashboard");
        let var = t("/api/v1/tenants/{id}");
        assert_eq!(lit.specificity_cmp(&var), Ordering::Less);
        assert_eq!(
            t("/v1/{a=**}").specificity_cmp(&t("/v1/{a}")),
            Ordering::Greater
        );
    }

    #[test]
    fn rejects_malformed_templates() {
        for bad in [
            "api",
            "/a/{id",
            "/a/{}",
            "/a/{x=/b}",
            "/a/{x={y}}",
            "/a//b",
            "/a/{id}{id2}",
            "/a/{id}/{id}",
        ] {
            assert!(
                PathTemplate::parse(bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }
}
