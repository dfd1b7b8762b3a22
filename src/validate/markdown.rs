//! report.md and validation.md, rendered with minijinja from `templates/report.md.j2` (built
//! in) or the table's `report-template`. The context is the report as report.json holds it;
//! filters give the number formats the built-in template uses.

use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value, context};

use super::report::ValidationReport;
use crate::error::{ConfigError, Error};

pub const BUILT_IN: &str = include_str!("../../templates/report.md.j2");

fn number(value: &Value) -> Result<f64, JinjaError> {
    f64::try_from(value.clone())
        .map_err(|_| JinjaError::new(ErrorKind::InvalidOperation, format!("{value} is not a number")))
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.add_filter("sci", |v: Value| -> Result<String, JinjaError> { Ok(format!("{:.2e}", number(&v)?)) });
    env.add_filter("fixed", |v: Value, digits: usize| -> Result<String, JinjaError> {
        Ok(format!("{:.*}", digits, number(&v)?))
    });
    env.add_filter("percent", |v: Value| -> Result<String, JinjaError> {
        Ok(format!("{:.1}%", number(&v)? * 100.0))
    });
    env.add_filter("bytes", |v: Value| -> Result<String, JinjaError> {
        Ok(crate::size::human_bytes(number(&v)? as u64))
    });
    env
}

/// Renders `report` with the template at `template` (or the built-in one).
pub fn render(report: &ValidationReport, template: Option<&Path>) -> Result<String, Error> {
    let (source, origin) = match template {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                origin: path.display().to_string(),
                key: "report-template".into(),
                message: format!("cannot read the template: {e}"),
                help: "point `report-template` at a readable minijinja file".into(),
            })?,
            path.display().to_string(),
        ),
        None => (BUILT_IN.to_string(), "templates/report.md.j2 (built in)".to_string()),
    };
    let failed = |e: JinjaError| {
        ConfigError::Invalid {
        origin: origin.clone(),
        key: "report-template".into(),
        message: format!(
            "the template does not render: {}{}",
            e.detail().unwrap_or(&e.kind().to_string()),
            e.line().map(|l| format!(" (line {l})")).unwrap_or_default()
        ),
        help: "fix the template (minijinja syntax; the context is `report`, as report.json holds it), or remove `report-template` to use the built-in one".into(),
    }
    };
    let mut env = environment();
    env.add_template_owned("report", source).map_err(failed)?;
    let template = env.get_template("report").map_err(failed)?;
    Ok(template.render(context! { report => Value::from_serialize(report) }).map_err(failed)?)
}

/// A report with every kind of row (a failing engine, a skipped one, a quantization section),
/// so a template's loops and branches run when it is checked.
const SAMPLE_REPORT: &str = include_str!("../../templates/sample-report.json");

/// Renders the template against the sample report, so a broken template is refused before a
/// run does any work.
pub fn check(template: Option<&Path>) -> Result<(), Error> {
    let sample: ValidationReport = serde_json::from_str(SAMPLE_REPORT).map_err(|e| ConfigError::Invalid {
        origin: "templates/sample-report.json (built in)".into(),
        key: "report-template".into(),
        message: e.to_string(),
        help: "this is a bug in this build: please report it".into(),
    })?;
    render(&sample, template).map(|_| ())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_template_renders_the_report_and_a_broken_one_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let report = ValidationReport::new("candle".into(), None, None, Vec::new());
        let good = dir.path().join("good.md.j2");
        std::fs::write(&good, "Checked against {{ report.reference }}: {{ 'ok' if report.passed }}\n")
            .unwrap();
        assert_eq!(render(&report, Some(&good)).unwrap(), "Checked against candle: ok\n");
        let broken = dir.path().join("broken.md.j2");
        std::fs::write(&broken, "line one\n{% for e in report.exports %}\nno end\n").unwrap();
        let err = check(Some(&broken)).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(&format!("invalid `report-template` in {}", broken.display())), "{text}");
        assert!(text.contains("(line 3)") || text.contains("(line 4)"), "{text}");
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        check(None).unwrap();
        // The built-in template shows merged vs unmerged and an unverified export.
        let sample: ValidationReport = serde_json::from_str(SAMPLE_REPORT).unwrap();
        let text = render(&sample, None).unwrap();
        assert!(
            text.contains(
                "Merged vs unmerged (the merged f32 model against that reference): max abs error 3.30e-6"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "| onnx-f32 | onnx | f32 | - | - | - | - | - | - | unverified: no engine measured it"
            ),
            "{text}"
        );
        assert!(text.contains("Verdict: FAILED"), "{text}");
        assert!(text.contains("Reference perplexity 280.1329"), "{text}");
        assert!(text.contains("| 280.1331 | 0.000% | 4.30e-8 | 2.90e-7 | 100.0% |"), "{text}");
    }
}
