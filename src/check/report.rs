//! The preflight report: one line per check, its status, and the exact fix. Printed by `ficus check`, logged (warnings)
//! and returned as the error (failures) by `ficus run`'s start-up preflight.

use std::fmt;

/// Severity of one preflight line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the preflight report.
#[derive(Debug, Clone)]
pub struct CheckItem {
    pub status: Status,
    pub title: String,
    pub detail: String,
    /// Exact SQL or config change that fixes the problem.
    pub fix: Option<String>,
}

/// The preflight report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub items: Vec<CheckItem>,
}

impl Report {
    pub(crate) fn push(
        &mut self,
        status: Status,
        title: impl Into<String>,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.items.push(CheckItem { status, title: title.into(), detail: detail.into(), fix });
    }

    /// Whether any check blocks streaming.
    pub fn is_blocking(&self) -> bool {
        self.items.iter().any(|i| i.status == Status::Fail)
    }

    /// The failing lines, for an error message.
    pub fn failures(&self) -> Vec<&CheckItem> {
        self.items.iter().filter(|i| i.status == Status::Fail).collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            let mark = match item.status {
                Status::Ok => "✓",
                Status::Warn => "!",
                Status::Fail => "✗",
            };
            write!(f, "{mark} {}", item.title)?;
            if !item.detail.is_empty() {
                write!(f, ": {}", item.detail)?;
            }
            writeln!(f)?;
            if let Some(fix) = &item.fix {
                for line in fix.lines() {
                    writeln!(f, "    fix: {line}")?;
                }
            }
        }
        Ok(())
    }
}
