//! Ending a reply at a stop sequence without ever showing it: text that could still turn
//! out to be the start of a stop sequence is held back until it is decided.

pub struct StopMatcher<'a> {
    stops: &'a [String],
    text: String,
    emitted: usize,
}

impl<'a> StopMatcher<'a> {
    pub fn new(stops: &'a [String]) -> Self {
        Self {
            stops,
            text: String::new(),
            emitted: 0,
        }
    }

    /// Adds decoded text and passes on what can no longer belong to a stop sequence. Returns
    /// true when a stop sequence appeared; the text is then cut where it starts.
    pub fn push(&mut self, piece: &str, on_text: &mut dyn FnMut(&str)) -> bool {
        self.text.push_str(piece);
        let pending = &self.text[self.emitted..];
        let earliest = self
            .stops
            .iter()
            .filter_map(|s| pending.find(s.as_str()))
            .min();
        if let Some(at) = earliest {
            self.text.truncate(self.emitted + at);
            self.flush(self.text.len(), on_text);
            return true;
        }
        let held = self
            .stops
            .iter()
            .map(|stop| longest_prefix_suffix(pending, stop))
            .max()
            .unwrap_or(0);
        self.flush(self.text.len() - held, on_text);
        false
    }

    fn flush(&mut self, upto: usize, on_text: &mut dyn FnMut(&str)) {
        if upto > self.emitted {
            on_text(&self.text[self.emitted..upto]);
            self.emitted = upto;
        }
    }

    /// Passes on what was held back and returns the whole text.
    pub fn finish(mut self, on_text: &mut dyn FnMut(&str)) -> String {
        self.flush(self.text.len(), on_text);
        self.text
    }
}

/// The length of the longest end of `text` that is a proper beginning of `stop`.
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    stop.char_indices()
        .map(|(i, _)| i)
        .skip(1)
        .filter(|&k| text.ends_with(&stop[..k]))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut shown = vec![];
        let mut stopped = false;
        for p in pieces {
            if m.push(p, &mut |t| shown.push(t.to_owned())) {
                stopped = true;
                break;
            }
        }
        let text = m.finish(&mut |t| shown.push(t.to_owned()));
        (shown, text, stopped)
    }

    #[test]
    fn text_before_a_stop_is_shown_and_the_stop_never() {
        let (shown, text, stopped) = run(&["\n\n"], &[" Hi", " there.", "\n", "\nBob"]);
        assert!(stopped);
        assert_eq!(text, " Hi there.");
        assert_eq!(shown.concat(), " Hi there.");
        // The first newline was held back while it could start "\n\n".
        assert_eq!(shown, [" Hi", " there."]);
    }

    #[test]
    fn a_held_prefix_that_does_not_complete_is_released() {
        let (shown, text, stopped) = run(&["\nBob:"], &["a", "\nB", "ut"]);
        assert!(!stopped);
        assert_eq!(text, "a\nBut");
        assert_eq!(shown, ["a", "\nBut"]);
    }

    #[test]
    fn a_stop_inside_one_piece_cuts_it() {
        let (shown, text, _) = run(&["\nUser:", "\n\n"], &["ok\nUser: more"]);
        assert_eq!(text, "ok");
        assert_eq!(shown, ["ok"]);
    }

    #[test]
    fn no_stops_shows_everything() {
        let (shown, text, stopped) = run(&[], &["a", "\n\n", "b"]);
        assert!(!stopped);
        assert_eq!(text, "a\n\nb");
        assert_eq!(shown.concat(), text);
    }

    #[test]
    fn unicode_near_a_stop_is_not_split() {
        let (shown, text, _) = run(&["→→"], &["日本", "→", "語"]);
        assert_eq!(text, "日本→語");
        assert_eq!(shown.concat(), text);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 128,
            failure_persistence: None,
            ..Default::default()
        })]

        /// Whatever the pieces and stops: no panic on a char boundary, what is shown is
        /// exactly the returned text, that text is a prefix of the input with no stop in it,
        /// and a stop, when found, follows it in the input.
        #[test]
        fn shown_text_is_the_input_up_to_the_first_stop(
            stops in proptest::collection::vec("[ab\n→é]{1,4}", 0..3),
            pieces in proptest::collection::vec("[ab\n→é ]{0,5}", 0..12),
        ) {
            let stops_ref: Vec<&str> = stops.iter().map(String::as_str).collect();
            let pieces_ref: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let (shown, text, stopped) = run(&stops_ref, &pieces_ref);
            let input = pieces.concat();
            proptest::prop_assert_eq!(shown.concat(), text.clone());
            proptest::prop_assert!(input.starts_with(&text));
            proptest::prop_assert!(!stops.iter().any(|s| text.contains(s.as_str())));
            if stopped {
                let rest = &input[text.len()..];
                proptest::prop_assert!(stops.iter().any(|s| rest.starts_with(s.as_str())));
            } else {
                proptest::prop_assert_eq!(text, input);
            }
        }
    }
}
