//! The REST route table, built from the `google.api.http` annotations of the
//! descriptor pool and validated at start-up.

use http::Method;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
};

use super::template::{Binding as PathBinding, PathTemplate};

const HTTP_RULE: &str = "google.api.http";
pub const HTTP_BODY: &str = "google.api.HttpBody";

/// Where the request body goes.
#[derive(Debug, Clone)]
pub enum BodyRule {
    /// No body.
    None,
    /// `body: "*"`: the whole request message, minus path variables.
    Whole,
    /// `body: "field"`: one top-level field (raw bytes for `HttpBody`).
    Field(FieldDescriptor),
}

/// One HTTP binding of one RPC.
#[derive(Debug, Clone)]
pub struct Route {
    pub http_method: Method,
    pub template: PathTemplate,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: String,
    pub body: BodyRule,
    pub response_body: Option<FieldDescriptor>,
}

impl Route {
    /// The message type the HTTP response body is made of.
    pub fn response_type(&self) -> MessageDescriptor {
        match self.response_body.as_ref().map(FieldDescriptor::kind) {
            Some(Kind::Message(m)) => m,
            _ => self.method.output(),
        }
    }

    /// Whether the response body is raw bytes (`google.api.HttpBody`).
    pub fn raw_response(&self) -> bool {
        self.response_type().full_name() == HTTP_BODY && self.response_body_is_singular()
    }

    fn response_body_is_singular(&self) -> bool {
        self.response_body.as_ref().is_none_or(|f| !f.is_list())
    }
}

pub enum RouteMatch<'a> {
    Found(&'a Route, Vec<PathBinding>),
    /// The path exists with other methods.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the table for every service of `package`; every RPC must carry
    /// a valid binding. Returns every problem found, not just the first.
    pub fn from_pool(pool: &DescriptorPool, package: &str) -> Result<Self, Vec<String>> {
        let mut routes = Vec::new();
        let mut problems = Vec::new();
        let Some(ext) = pool.get_extension_by_name(HTTP_RULE) else {
            return Err(vec![format!(
                "extension {HTTP_RULE} is not in the descriptor pool"
            )]);
        };
        for service in pool.services().filter(|s| s.package_name() == package) {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&ext) {
                    problems.push(format!(
                        "{}: no google.api.http annotation",
                        method.full_name()
                    ));
                    continue;
                }
                let Some(rule) = options.get_extension(&ext).as_message().cloned() else {
                    problems.push(format!(
                        "{}: google.api.http is not a message",
                        method.full_name()
                    ));
                    continue;
                };
                let mut rules = vec![rule.clone()];
                if let Some(more) = rule.get_field_by_name("additional_bindings") {
                    rules.extend(
                        more.as_list()
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|v| v.as_message().cloned()),
                    );
                }
                for rule in rules {
                    match route(&method, &rule) {
                        Ok(route) => routes.push(route),
                        Err(problem) => problems.push(format!("{}: {problem}", method.full_name())),
                    }
                }
            }
        }
        for (i, a) in routes.iter().enumerate() {
            for b in &routes[i + 1..] {
                if a.http_method == b.http_method
                    && a.template.to_string() == b.template.to_string()
                {
                    problems.push(format!(
                        "{} {} is bound by both {} and {}",
                        a.http_method,
                        a.template,
                        a.method.full_name(),
                        b.method.full_name()
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        routes.sort_by(|a, b| a.template.specificity_cmp(&b.template));
        Ok(Self { routes })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Finds the most specific route for a request.
    pub fn find(&self, method: &Method, path: &str) -> RouteMatch<'_> {
        let mut allowed = Vec::new();
        for route in &self.routes {
            if let Some(bindings) = route.template.matches(path) {
                if route.http_method == method {
                    return RouteMatch::Found(route, bindings);
                }
                if !allowed.contains(&route.http_method) {
                    allowed.push(route.http_method.clone());
                }
            }
        }
        if allowed.is_empty() {
            RouteMatch::NotFound
        } else {
            RouteMatch::MethodNotAllowed(allowed)
        }
    }
}

fn route(method: &MethodDescriptor, rule: &DynamicMessage) -> Result<Route, String> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_owned))
    };
    let mut pattern = None;
    for (name, verb) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if rule.has_field_by_name(name) {
            pattern = Some((verb, text(name).unwrap_or_default()));
        }
    }
    if rule.has_field_by_name("custom") {
        let custom = rule
            .get_field_by_name("custom")
            .and_then(|v| v.as_message().cloned());
        let field = |name| {
            custom
                .as_ref()
                .and_then(|c| c.get_field_by_name(name)?.as_str().map(str::to_owned))
        };
        let kind = field("kind").unwrap_or_default();
        let verb = Method::from_bytes(kind.as_bytes())
            .map_err(|_| format!("invalid custom method `{kind}`"))?;
        pattern = Some((verb, field("path").unwrap_or_default()));
    }
    let (http_method, path) = pattern.ok_or("the binding has no HTTP method and path")?;
    let template = PathTemplate::parse(&path)?;
    let input = method.input();
    for variable in template.variables() {
        let field = resolve(&input, &variable.field_path)?;
        if field.is_list() || field.is_map() || matches!(field.kind(), Kind::Message(_)) {
            return Err(format!(
                "path variable `{}` must be a singular scalar field",
                variable.field_path.join(".")
            ));
        }
    }
    let body = match text("body").unwrap_or_default().as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::Whole,
        name => BodyRule::Field(
            input
                .get_field_by_name(name)
                .ok_or_else(|| format!("body field `{name}` is not in {}", input.name()))?,
        ),
    };
    if matches!(http_method, Method::GET | Method::DELETE) && !matches!(body, BodyRule::None) {
        return Err(format!("{http_method} bindings cannot have a body"));
    }
    let output = method.output();
    let response_body = match text("response_body").unwrap_or_default().as_str() {
        "" => None,
        name => Some(
            output
                .get_field_by_name(name)
                .ok_or_else(|| format!("response_body `{name}` is not in {}", output.name()))?,
        ),
    };
    let route = Route {
        http_method,
        template,
        grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
        method: method.clone(),
        body,
        response_body,
    };
    if method.is_client_streaming() {
        return Err("client-streaming methods cannot be transcoded".to_owned());
    }
    if method.is_server_streaming() && !route.raw_response() {
        return Err("server-streaming methods must respond with google.api.HttpBody".to_owned());
    }
    Ok(route)
}

/// Resolves a dotted field path (proto names) through singular messages.
pub fn resolve(desc: &MessageDescriptor, path: &[String]) -> Result<FieldDescriptor, String> {
    let mut current = desc.clone();
    let mut found = None;
    for (i, name) in path.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .ok_or_else(|| format!("field `{}` is not in {}", path[..=i].join("."), desc.name()))?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
                _ => {
                    return Err(format!(
                        "`{}` is not a singular message",
                        path[..=i].join(".")
                    ));
                }
            }
        }
        found = Some(field);
    }
    found.ok_or_else(|| "empty field path".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn table() -> RouteTable {
        RouteTable::from_pool(proto::testing::pool(), "tenlyr.testing.v1").unwrap()
    }

    fn found(t: &RouteTable, method: Method, path: &str) -> (String, Vec<PathBinding>) {
        match t.find(&method, path) {
            RouteMatch::Found(route, bindings) => (route.method.name().to_owned(), bindings),
            _ => panic!("{method} {path} should match"),
        }
    }

    #[test]
    fn the_product_contract_validates() {
        let table = RouteTable::from_pool(proto::pool(), proto::PACKAGE)
            .unwrap_or_else(|p| panic!("{p:#?}"));
        let rpcs = proto::pool()
            .services()
            .filter(|s| s.package_name() == proto::PACKAGE)
            .map(|s| s.methods().len())
            .sum::<usize>();
        assert_eq!(table.routes().len(), rpcs, "one binding per RPC");
    }

    #[test]
    fn literal_routes_win_and_additional_bindings_work() {
        let t = table();
        assert_eq!(
            found(&t, Method::GET, "/v1/shelves/featured/books").0,
            "GetFeatured"
        );
        assert_eq!(
            found(&t, Method::GET, "/v1/shelves/s1/books").0,
            "ListBooks"
        );
        assert_eq!(found(&t, Method::GET, "/v1/books/b1").0, "GetBook");
        assert_eq!(
            found(&t, Method::GET, "/v1/shelves/s/books/b").1[0].1,
            "shelves/s/books/b"
        );
        assert_eq!(
            found(&t, Method::POST, "/v1/shelves/s1:archive").0,
            "ArchiveShelf"
        );
        assert_eq!(found(&t, Method::GET, "/v1/files/a/b").1[0].1, "a/b");
    }

    #[test]
    fn wrong_method_and_unknown_paths() {
        let t = table();
        assert!(
            matches!(t.find(&Method::DELETE, "/v1/shelves/s1/books"), RouteMatch::MethodNotAllowed(m) if m.contains(&Method::GET))
        );
        assert!(matches!(
            t.find(&Method::GET, "/v2/nothing"),
            RouteMatch::NotFound
        ));
    }

    #[test]
    fn raw_bodies_are_detected() {
        let t = table();
        let read = t
            .routes()
            .iter()
            .find(|r| r.method.name() == "ReadFile")
            .unwrap();
        assert!(read.raw_response());
        let upload = t
            .routes()
            .iter()
            .find(|r| r.method.name() == "Upload")
            .unwrap();
        assert!(
            matches!(&upload.body, BodyRule::Field(f) if matches!(f.kind(), Kind::Message(m) if m.full_name() == HTTP_BODY))
        );
    }

    #[test]
    fn invalid_annotations_are_all_reported() {
        let problems =
            RouteTable::from_pool(proto::testing::pool(), "tenlyr.testing.invalid.v1").unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "NoRule: no google.api.http",
            "`missing`",
            "cannot have a body",
            "response_body `nope`",
            "bound by both",
            "singular scalar",
            "unterminated variable",
            "server-streaming",
        ] {
            assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
        }
    }
}
