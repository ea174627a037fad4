//! A route's `error_pages`: files, read when the topology is loaded, that
//! replace the body of tollgate's own answers of their status on that route
//! (429, 413, 502, 503, 504, ...). The status and headers stay.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use std::path::PathBuf;

pub struct ErrorPage {
    pub body: Bytes,
    pub content_type: HeaderValue,
}

#[derive(Default)]
pub struct ErrorPages {
    pages: Vec<(StatusCode, ErrorPage)>,
}

impl ErrorPages {
    /// Reads every file of `pages`; the message of each that cannot be read,
    /// with its status.
    pub fn read(pages: &[(StatusCode, PathBuf)]) -> Result<ErrorPages, Vec<(StatusCode, String)>> {
        let mut read = Vec::with_capacity(pages.len());
        let mut problems = Vec::new();
        for (status, path) in pages {
            match std::fs::read(path) {
                Ok(body) => {
                    let mime = mime_guess::from_path(path).first_or_text_plain();
                    let content_type = HeaderValue::from_str(mime.as_ref())
                        .unwrap_or(HeaderValue::from_static("text/plain"));
                    read.push((
                        *status,
                        ErrorPage {
                            body: Bytes::from(body),
                            content_type,
                        },
                    ));
                }
                Err(e) => {
                    problems.push((*status, format!("cannot read `{}`: {e}", path.display())));
                }
            }
        }
        if problems.is_empty() {
            Ok(ErrorPages { pages: read })
        } else {
            Err(problems)
        }
    }

    /// The page for answers of `status`, if there is one.
    pub fn get(&self, status: StatusCode) -> Option<&ErrorPage> {
        self.pages
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, p)| p)
    }
}
