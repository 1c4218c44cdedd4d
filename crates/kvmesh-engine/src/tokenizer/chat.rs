//! ChatML prompts, recognised from the model's Jinja chat template rather than interpreted.
//!
//! kvmesh does not embed a Jinja engine. [`ChatTemplate::parse`] reduces the template to a
//! canonical form (whitespace and trim markers outside string literals dropped, literals
//! re-quoted, adjacent literals joined, `x.role` written `x['role']`) and compares it with the
//! ChatML shapes kvmesh renders natively:
//!
//! ```text
//! {% for message in messages %}
//!   [{% if loop.first and messages[0]['role'] != 'system' %}
//!      {{ '<|im_start|>system\n<DEFAULT PROMPT><|im_end|>\n' }}{% endif %}]
//!   {{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
//! {% endfor %}
//! {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
//! ```
//!
//! (SmolLM2's template, with its default system prompt, and the plain ChatML template without
//! one.) Anything else is [`TokenizerError::UnsupportedChatTemplate`]: a ChatML look-alike with
//! tools, a different default-prompt condition or extra text would otherwise be rendered
//! subtly wrong, which is worse than a clear refusal. Whitespace outside tags is accepted only
//! where Hugging Face's rendering (`trim_blocks`, `lstrip_blocks`, `-` markers, one trailing
//! newline dropped) removes it.

use crate::gguf::GgufFile;

use super::TokenizerError;

/// The GGUF key holding the Jinja chat template.
const TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who speaks: `system`, `user`, `assistant`, or any other role the model knows.
    pub role: String,
    /// What is said, inserted verbatim.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A ChatML prompt renderer: `<|im_start|>{role}\n{content}<|im_end|>\n` per message, an
/// optional default system message when the conversation does not open with one, and
/// `<|im_start|>assistant\n` when a generation prompt is asked for.
///
/// The rendered string contains control-token text; encode it with
/// [`Tokenizer::encode`](super::Tokenizer::encode) and `add_special = true`. Message contents
/// are not escaped (as in the Jinja template), so a content that spells `<|im_end|>` becomes
/// that control token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    default_system: Option<String>,
}

impl ChatTemplate {
    /// ChatML with the given default system prompt (inserted when the first message's role is
    /// not `system`), or none.
    pub fn chatml(default_system: Option<String>) -> Self {
        ChatTemplate { default_system }
    }

    /// Recognises the template stored under `tokenizer.chat_template`.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let value = gguf
            .get(TEMPLATE_KEY)
            .ok_or(TokenizerError::MissingMetadata { key: TEMPLATE_KEY })?;
        let source = value.as_str().ok_or(TokenizerError::WrongMetadataType {
            key: TEMPLATE_KEY,
            expected: "a string",
        })?;
        Self::parse(source)
    }

    /// Recognises a Jinja chat template's source. Accepted: plain ChatML, optionally with
    /// SmolLM2's default-system block, in any spelling that differs only in whitespace the
    /// template does not output, `-` trim markers, quote style, `x.role` for `x['role']`, and
    /// how adjacent string literals are split by `+`:
    ///
    /// ```text
    /// {% for message in messages %}
    ///   [{% if loop.first and messages[0]['role'] != 'system' %}
    ///      {{ '<|im_start|>system\n<DEFAULT PROMPT><|im_end|>\n' }}{% endif %}]
    ///   {{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
    /// {% endfor %}
    /// {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
    /// ```
    ///
    /// Anything else, including ChatML with tools or another default-prompt condition, is
    /// [`TokenizerError::UnsupportedChatTemplate`].
    pub fn parse(source: &str) -> Result<Self, TokenizerError> {
        let unsupported = |reason| TokenizerError::UnsupportedChatTemplate { reason };
        if !source.contains("<|im_start|>") {
            return Err(unsupported("not a ChatML template (no <|im_start|>)"));
        }
        let canon = canonical(source).map_err(unsupported)?;
        let rest = canon.strip_prefix(HEAD).ok_or(unsupported(NOT_PLAIN))?;
        let (default_system, rest) = match rest.strip_prefix(SYSTEM_OPEN) {
            Some(after) => {
                let end = after.find(SYSTEM_CLOSE).ok_or(unsupported(NOT_PLAIN))?;
                let prompt = unquote(&after[..end]).ok_or(unsupported(NOT_PLAIN))?;
                (Some(prompt), &after[end + SYSTEM_CLOSE.len()..])
            }
            None => (None, rest),
        };
        if rest != TAIL {
            return Err(unsupported(NOT_PLAIN));
        }
        Ok(ChatTemplate { default_system })
    }

    /// The system prompt inserted when a conversation does not open with a system message.
    pub fn default_system_prompt(&self) -> Option<&str> {
        self.default_system.as_deref()
    }

    /// Renders `messages` as the template would, ending with `<|im_start|>assistant\n` if
    /// `add_generation_prompt`. An empty conversation renders no default system message (the
    /// template inserts it on the loop's first iteration).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        let mut out = String::new();
        for (i, m) in messages.iter().enumerate() {
            if i == 0 && m.role != "system" {
                if let Some(system) = &self.default_system {
                    push_turn(&mut out, "system", system);
                }
            }
            push_turn(&mut out, &m.role, &m.content);
        }
        if add_generation_prompt {
            out.push_str("<|im_start|>assistant\n");
        }
        out
    }
}

fn push_turn(out: &mut String, role: &str, content: &str) {
    out.push_str("<|im_start|>");
    out.push_str(role);
    out.push('\n');
    out.push_str(content);
    out.push_str("<|im_end|>\n");
}

const NOT_PLAIN: &str = "a ChatML-like template with constructs kvmesh does not render \
     (only plain ChatML, optionally with a default system prompt, is recognised)";

// The canonical pieces of the accepted templates (string literals hold real newlines).
const HEAD: &str = "{%formessageinmessages%}";
const SYSTEM_OPEN: &str = "{%ifloop.firstandmessages[0]['role']!='system'%}{{'<|im_start|>system\n";
const SYSTEM_CLOSE: &str = "<|im_end|>\n'}}{%endif%}";
const TAIL: &str = "{{'<|im_start|>'+message['role']+'\n'+message['content']+'<|im_end|>\n'}}\
     {%endfor%}{%ifadd_generation_prompt%}{{'<|im_start|>assistant\n'}}{%endif%}";

/// Undoes the escaping of [`canonical`]'s literals (`\'` and `\\`); `None` if the text is not
/// the inside of one canonical literal.
fn unquote(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '\'' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// A lexed piece of a template.
#[derive(Debug, PartialEq)]
enum Piece {
    /// `{%`, `{{` (after dropping a `-` trim marker); `trim` if it had one.
    Open { block: bool, trim: bool },
    /// `%}`, `}}`; `trim` if preceded by `-`.
    Close { block: bool, trim: bool },
    /// A string literal inside a tag, unescaped.
    Literal(String),
    /// Any other non-whitespace character inside a tag.
    Char(char),
    /// Text outside tags.
    Text(String),
}

/// Reduces a template to the canonical form described in the module docs, or says why not.
fn canonical(source: &str) -> Result<String, &'static str> {
    let pieces = lex(source)?;
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < pieces.len() {
        match &pieces[i] {
            Piece::Open { block, .. } => out.push_str(if *block { "{%" } else { "{{" }),
            Piece::Close { block, .. } => out.push_str(if *block { "%}" } else { "}}" }),
            Piece::Char(c) => out.push(*c),
            Piece::Literal(first) => {
                // Join `'a' + 'b' + ...` into one literal.
                let mut joined = first.clone();
                while let (Some(Piece::Char('+')), Some(Piece::Literal(next))) =
                    (pieces.get(i + 1), pieces.get(i + 2))
                {
                    joined.push_str(next);
                    i += 2;
                }
                out.push('\'');
                for c in joined.chars() {
                    if c == '\'' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('\'');
            }
            Piece::Text(text) => {
                let prev = i.checked_sub(1).and_then(|j| pieces.get(j));
                if !rendered_text_is_empty(text, prev, pieces.get(i + 1)) {
                    return Err("text outside Jinja tags that the template would output");
                }
            }
        }
        i += 1;
    }
    Ok(out
        .replace(".role", "['role']")
        .replace(".content", "['content']"))
}

/// Whether whitespace-only `text` between tags renders as nothing under Hugging Face's Jinja
/// settings (`trim_blocks`, `lstrip_blocks`, `-` markers, trailing newline dropped).
fn rendered_text_is_empty(text: &str, prev: Option<&Piece>, next: Option<&Piece>) -> bool {
    if !text.chars().all(char::is_whitespace) {
        return false;
    }
    let mut t = text;
    match prev {
        Some(Piece::Close { trim: true, .. }) => t = t.trim_start(),
        Some(Piece::Close { block: true, .. }) => {
            t = t.strip_prefix("\r\n").or(t.strip_prefix('\n')).unwrap_or(t)
        }
        _ => {}
    }
    // `t` is still a suffix of `text`: is it at the start of a line?
    let line_start = prev.is_none() || text[..text.len() - t.len()].ends_with('\n');
    match next {
        Some(Piece::Open { trim: true, .. }) => t = t.trim_end(),
        Some(Piece::Open { block: true, .. }) => {
            // lstrip_blocks strips spaces and tabs between a line's start and a block tag.
            let stripped = t.trim_end_matches([' ', '\t']);
            if stripped.ends_with('\n') || (stripped.is_empty() && line_start) {
                t = stripped;
            }
        }
        None => t = t.strip_suffix('\n').unwrap_or(t),
        _ => {}
    }
    t.is_empty()
}

fn lex(source: &str) -> Result<Vec<Piece>, &'static str> {
    let mut pieces = Vec::new();
    let mut rest = source;
    loop {
        // Outside tags: text up to the next `{%`, `{{` or `{#`.
        let open = find_open(rest);
        let text = &rest[..open.unwrap_or(rest.len())];
        if !text.is_empty() {
            pieces.push(Piece::Text(text.to_string()));
        }
        let Some(at) = open else { break };
        rest = &rest[at..];
        if let Some(comment) = rest.strip_prefix("{#") {
            let end = comment.find("#}").ok_or("unterminated comment")?;
            rest = &comment[end + 2..];
            continue;
        }
        let block = rest.starts_with("{%");
        rest = &rest[2..];
        let trim = rest.starts_with('-');
        if trim {
            rest = &rest[1..];
        }
        pieces.push(Piece::Open { block, trim });
        // Inside a tag: literals, characters, up to the matching close.
        let close = if block { "%}" } else { "}}" };
        loop {
            let mut chars = rest.chars();
            let Some(c) = chars.next() else {
                return Err("unterminated tag");
            };
            if let Some(after) = rest.strip_prefix('-').and_then(|r| r.strip_prefix(close)) {
                pieces.push(Piece::Close { block, trim: true });
                rest = after;
                break;
            }
            if let Some(after) = rest.strip_prefix(close) {
                pieces.push(Piece::Close { block, trim: false });
                rest = after;
                break;
            }
            if c == '\'' || c == '"' {
                let (literal, after) = lex_literal(chars.as_str(), c)?;
                pieces.push(Piece::Literal(literal));
                rest = after;
            } else {
                if !c.is_whitespace() {
                    pieces.push(Piece::Char(c));
                }
                rest = chars.as_str();
            }
        }
    }
    Ok(pieces)
}

fn find_open(s: &str) -> Option<usize> {
    s.match_indices('{')
        .map(|(i, _)| i)
        .find(|&i| matches!(s.as_bytes().get(i + 1), Some(b'%' | b'{' | b'#')))
}

/// Reads a Jinja string literal's body after its opening `quote`, decoding the escapes Jinja
/// (Python) knows; returns the text and what follows the closing quote.
fn lex_literal(s: &str, quote: char) -> Result<(String, &str), &'static str> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, &s[i + c.len_utf8()..])),
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(e @ ('\\' | '\'' | '"')) => out.push(e),
                Some(e) => {
                    out.push('\\');
                    out.push(e);
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    Err("unterminated string literal")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// The plain ChatML template as Hugging Face documents it (escaped newlines, `-` markers).
    const CHATML: &str = "{% for message in messages %}\n    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' -}}\n{% endfor %}\n{%- if add_generation_prompt %}{{ \"<|im_start|>assistant\\n\" }}{% endif %}\n";

    #[test]
    fn recognises_smollm2_with_its_default_prompt() {
        let t = ChatTemplate::parse(SMOLLM2).unwrap();
        assert_eq!(
            t.default_system_prompt(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
    }

    #[test]
    fn recognises_plain_chatml_in_another_spelling() {
        let t = ChatTemplate::parse(CHATML).unwrap();
        assert_eq!(t, ChatTemplate::chatml(None));
    }

    #[test]
    fn renders_like_the_template() {
        let t = ChatTemplate::parse(SMOLLM2).unwrap();
        let sys = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
        assert_eq!(
            t.render(&[ChatMessage::user("Hi")], true),
            format!("{sys}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        );
        let own = [ChatMessage::system("Be brief."), ChatMessage::user("Hi")];
        assert_eq!(
            t.render(&own, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
        assert_eq!(t.render(&[], true), "<|im_start|>assistant\n");
        // Only the first message decides; a later system message is an ordinary turn.
        let later = [ChatMessage::user("a"), ChatMessage::system("b")];
        assert!(t.render(&later, false).starts_with(sys));
    }

    #[test]
    fn refuses_what_it_cannot_render() {
        let llama3 = "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}{% endfor %}";
        let with_tools = SMOLLM2.replace(
            "{% endfor %}",
            "{% if tools %}{{ tools }}{% endif %}{% endfor %}",
        );
        let with_text = SMOLLM2.replace("{% endfor %}", "{% endfor %}Note: ");
        let other_condition = SMOLLM2.replace("loop.first and ", "");
        for bad in [
            llama3,
            &with_tools,
            &with_text,
            &other_condition,
            "{{ '<|im_start|>",
        ] {
            assert!(
                matches!(
                    ChatTemplate::parse(bad),
                    Err(TokenizerError::UnsupportedChatTemplate { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn whitespace_between_tags_is_accepted_only_where_jinja_drops_it() {
        let spaced = SMOLLM2.replace("{% endfor %}", "{% endfor %}\n");
        assert!(ChatTemplate::parse(&spaced).is_ok(), "trim_blocks drops it");
        let blank_line = SMOLLM2.replace("{% endfor %}", "{% endfor %}\n\n");
        assert!(
            ChatTemplate::parse(&blank_line).is_err(),
            "one newline would be output"
        );
        let output_space = SMOLLM2.replace("{{'<|im_start|>' +", " {{'<|im_start|>' +");
        assert!(
            ChatTemplate::parse(&output_space).is_err(),
            "a space before {{{{ is output"
        );
    }

    #[test]
    fn literals_keep_quotes_and_escapes() {
        let t = SMOLLM2.replace("named SmolLM", "named \\'Smol\\' \\\\ LM");
        let p = ChatTemplate::parse(&t).unwrap();
        assert_eq!(
            p.default_system_prompt(),
            Some("You are a helpful AI assistant named 'Smol' \\ LM, trained by Hugging Face")
        );
    }
}
