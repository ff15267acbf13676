//! Properties: the reader never panics, whatever the input; the masker equals masking the whole
//! output at once, however the output is cut into chunks.

use nimbus_ci::{Context, Limits, Masker, Pattern, parse, plan_run};
use proptest::prelude::*;

/// Fragments of real workflows, so that random documents get past the YAML layer often.
fn fragment() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "on: push\n",
        "on:\n  push:\n    branches: [",
        "jobs:\n",
        "  build:\n",
        "    runs-on: ",
        "linux\n",
        "    needs: ",
        "    steps:\n",
        "      - run: ",
        "echo ${{ matrix.os }}\n",
        "${{ secrets.X }}",
        "${{ env.A }}",
        "${{ github.sha }}",
        "${{",
        "}}",
        "    strategy:\n      matrix:\n",
        "        os: [a, b]\n",
        "        include:\n          - ",
        "        exclude:\n",
        "env:\n  A: ",
        "'",
        "\"",
        "[",
        "]",
        "{",
        "}",
        "- ",
        ": ",
        "\n",
        "  ",
        "&a ",
        "*a ",
        "!!str ",
        "|\n",
        ">\n",
        "#",
        "**",
        "!",
        "?",
        "\t",
        "é",
        "concurrency: ",
        "if: ",
        "always()",
        "shell: ",
        "timeout-minutes: ",
        "99999999999",
        "-1",
    ])
    .prop_map(str::to_owned)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn reader_never_panics_on_bytes(text in "\\PC{0,300}") {
        if let Ok(wf) = parse("ci.yml", &text, &Limits::default()) {
            let _ = plan_run(&wf, &Context::default(), &Limits::default());
        }
    }

    #[test]
    fn reader_never_panics_on_workflow_like_text(parts in prop::collection::vec(fragment(), 0..60)) {
        let text = parts.concat();
        if let Ok(wf) = parse("ci.yml", &text, &Limits::default()) {
            let _ = plan_run(&wf, &Context::default(), &Limits::default());
        }
    }

    #[test]
    fn patterns_never_panic(pattern in "\\PC{0,20}", text in "[a-z/.*?+\\[\\]-]{0,20}") {
        if let Ok(p) = Pattern::new(&pattern) {
            let _ = p.matches(&text);
        }
    }

    #[test]
    fn masker_equals_masking_at_once(
        secrets in prop::collection::vec("[ab\\n]{0,6}", 0..4),
        text in "[abc\\n]{0,80}",
        cuts in prop::collection::vec(0usize..80, 0..10),
    ) {
        let expected = naive(&secrets, text.as_bytes());
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
        cuts.sort_unstable();
        let mut masker = Masker::new(&secrets);
        let mut out = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([text.len()]) {
            out.extend(masker.push(&text.as_bytes()[from..cut]));
            from = cut;
        }
        out.extend(masker.finish());
        prop_assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn one_secret_is_str_replace(secret in "[ab]{3,6}", text in "[ab ]{0,60}", cut in 0usize..60) {
        let cut = cut.min(text.len());
        let mut masker = Masker::new([&secret]);
        let mut out = masker.push(&text.as_bytes()[..cut]);
        out.extend(masker.push(&text.as_bytes()[cut..]));
        out.extend(masker.finish());
        prop_assert_eq!(String::from_utf8(out).unwrap(), text.replace(&secret, "***"));
    }
}

/// The reference: over the whole text, at each position the longest pattern that starts there.
fn naive(secrets: &[String], text: &[u8]) -> String {
    let mut patterns: Vec<Vec<u8>> = Vec::new();
    for s in secrets {
        patterns.push(s.as_bytes().to_vec());
        patterns.extend(s.split('\n').map(|l| l.as_bytes().to_vec()));
    }
    patterns
        .retain(|p| p.len() >= nimbus_ci::MIN_MASKED_LEN && !p.iter().all(u8::is_ascii_whitespace));
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let longest = patterns
            .iter()
            .filter(|p| text[i..].starts_with(p))
            .map(Vec::len)
            .max();
        match longest {
            Some(n) => {
                out.extend_from_slice(b"***");
                i += n;
            }
            None => {
                out.push(text[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}
