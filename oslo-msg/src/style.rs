//! Terminal styles (ANSI, via `anstyle`), switched off for pipes and when `NO_COLOR` is set.

use anstyle::{AnsiColor, Style};

/// Paints text when its stream is a terminal; passes it through otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Paint {
    enabled: bool,
}

impl Paint {
    /// Colors on when `is_terminal` and `NO_COLOR` is unset or empty (no-color.org).
    pub fn for_stream(is_terminal: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Paint {
            enabled: is_terminal && !no_color,
        }
    }

    fn paint(&self, style: Style, text: &str) -> String {
        if self.enabled {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_string()
        }
    }

    /// Bold red, for `error:`.
    pub fn error(&self, text: &str) -> String {
        self.paint(Style::new().bold().fg_color(Some(AnsiColor::Red.into())), text)
    }

    /// Bold.
    pub fn bold(&self, text: &str) -> String {
        self.paint(Style::new().bold(), text)
    }

    /// Dimmed, for secondary detail.
    pub fn dim(&self, text: &str) -> String {
        self.paint(Style::new().dimmed(), text)
    }

    /// Cyan, for names (publisher ids, servers).
    pub fn name(&self, text: &str) -> String {
        self.paint(Style::new().fg_color(Some(AnsiColor::Cyan.into())), text)
    }

    /// Green, for success.
    pub fn ok(&self, text: &str) -> String {
        self.paint(Style::new().fg_color(Some(AnsiColor::Green.into())), text)
    }

    /// A notification priority in its color (errors red, warnings yellow, ...).
    pub fn priority(&self, priority: &str) -> String {
        let color = match priority {
            "CRITICAL" | "ERROR" => AnsiColor::Red,
            "WARN" | "WARNING" => AnsiColor::Yellow,
            "INFO" => AnsiColor::Green,
            "AUDIT" => AnsiColor::Magenta,
            _ => AnsiColor::Blue,
        };
        self.paint(Style::new().bold().fg_color(Some(color.into())), &format!("{priority:<8}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_streams_get_no_escape_codes() {
        let plain = Paint::for_stream(false);
        assert_eq!(plain.error("error:"), "error:");
        assert_eq!(plain.priority("INFO"), "INFO    ");
    }
}
