//! Matching an exchange's method and path against the routes.
//!
//! Path templates use `{name}` for one segment and `{*name}` for the rest
//! of the path. Routes are indexed by a `matchit` router; templates are
//! normalised (`{p0}`, `{p1}`, ...) before insertion so two routes may name
//! the same segment differently, and every route sharing a template is
//! tried in file order.

use std::collections::HashMap;

use crate::rules::model::Route;

/// The routes and the router over their path templates.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    router: matchit::Router<Vec<usize>>,
}

/// A route whose method and path matched, with the path's parameters.
pub struct PathMatch<'a> {
    pub route: &'a Route,
    pub params: Vec<(&'a str, String)>,
}

impl RouteTable {
    /// Indexes `routes`. Returns, for each route that could not be
    /// indexed, its position and the reason.
    pub fn build(routes: Vec<Route>) -> Result<Self, Vec<(usize, String)>> {
        let mut by_template: Vec<(String, Vec<usize>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut errors = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            match parse_template(&route.path) {
                Ok((normal, _)) => {
                    let slot = *index.entry(normal.clone()).or_insert_with(|| {
                        by_template.push((normal, Vec::new()));
                        by_template.len() - 1
                    });
                    by_template[slot].1.push(i);
                }
                Err(reason) => errors.push((i, reason)),
            }
        }
        let mut router = matchit::Router::new();
        for (template, members) in by_template {
            if let Err(e) = router.insert(template, members.clone()) {
                for i in members {
                    errors.push((
                        i,
                        format!(
                            "path `{}` conflicts with another route's path: {e}",
                            routes[i].path
                        ),
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(Self { routes, router })
        } else {
            Err(errors)
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The routes whose path template and method match, in file order.
    pub fn lookup<'a>(&'a self, method: &str, path: &str) -> Vec<PathMatch<'a>> {
        let Ok(found) = self.router.at(path) else {
            return Vec::new();
        };
        let values: Vec<&str> = found.params.iter().map(|(_, v)| v).collect();
        found
            .value
            .iter()
            .map(|&i| &self.routes[i])
            .filter(|r| r.accepts_method(method))
            .map(|route| PathMatch {
                route,
                params: route
                    .params
                    .iter()
                    .zip(&values)
                    .map(|(k, v)| (k.as_str(), (*v).to_string()))
                    .collect(),
            })
            .collect()
    }

    /// Every route whose path template matches, whatever its method, in
    /// file order.
    pub fn lookup_any_method(&self, path: &str) -> Vec<&Route> {
        match self.router.at(path) {
            Ok(found) => found.value.iter().map(|&i| &self.routes[i]).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Cheap check on the request path: `None` when no route can match
    /// (the exchange is not tapped at all), else the first matching
    /// route and the largest body capture cap among them.
    pub fn tap_plan(&self, method: &str, path: &str) -> Option<TapPlan<'_>> {
        let found = self.router.at(path).ok()?;
        let mut routes = found
            .value
            .iter()
            .map(|&i| &self.routes[i])
            .filter(|r| r.accepts_method(method));
        let first = routes.next()?;
        let cap = routes.fold(first.capture_max, |acc, r| acc.max(r.capture_max));
        Some(TapPlan {
            route: first.name.as_str(),
            template: first.path.as_str(),
            cap,
        })
    }
}

/// What the tap copies of a request some route may match.
#[derive(Debug, Clone, Copy)]
pub struct TapPlan<'a> {
    /// The first matching route's name.
    pub route: &'a str,
    /// Its path template (`/v1/imports/{id}`).
    pub template: &'a str,
    /// The largest body capture cap of the matching routes.
    pub cap: Option<usize>,
}

/// Checks a path template and returns its normalised form and the names
/// of its parameters.
pub fn parse_template(path: &str) -> Result<(String, Vec<String>), String> {
    if !path.starts_with('/') {
        return Err(format!("path `{path}` must start with `/`"));
    }
    let mut normal = String::with_capacity(path.len());
    let mut names: Vec<String> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        normal.push('/');
        if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (catch_all, name) = match inner.strip_prefix('*') {
                Some(n) => (true, n),
                None => (false, inner),
            };
            if !is_identifier(name) {
                return Err(format!(
                    "path `{path}`: `{{{inner}}}` is not a valid parameter name"
                ));
            }
            if catch_all && i + 1 != segments.len() {
                return Err(format!(
                    "path `{path}`: `{{*{name}}}` must be the last segment"
                ));
            }
            if names.iter().any(|n| n == name) {
                return Err(format!("path `{path}`: parameter `{name}` appears twice"));
            }
            let n = names.len();
            normal.push_str(&if catch_all {
                format!("{{*p{n}}}")
            } else {
                format!("{{p{n}}}")
            });
            names.push(name.to_string());
        } else if seg.contains('{') || seg.contains('}') {
            return Err(format!(
                "path `{path}`: a parameter must be a whole segment, like `{{id}}`"
            ));
        } else {
            normal.push_str(seg);
        }
    }
    Ok((normal, names))
}

/// A name a `{param}` may have.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_normalise() {
        assert_eq!(
            parse_template("/v1/embeds/{embed_id}/upload").unwrap(),
            (
                "/v1/embeds/{p0}/upload".to_string(),
                vec!["embed_id".to_string()]
            )
        );
        assert_eq!(parse_template("/files/{*rest}").unwrap().0, "/files/{*p0}");
        assert!(parse_template("v1").is_err());
        assert!(parse_template("/v1/{id").is_err());
        assert!(parse_template("/v1/x{id}").is_err());
        assert!(parse_template("/v1/{id}/{id}").is_err());
        assert!(parse_template("/v1/{*a}/b").is_err());
        assert!(parse_template("/v1/{1x}").is_err());
    }
}
