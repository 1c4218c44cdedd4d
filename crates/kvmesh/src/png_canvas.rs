//! What the PNG plots share (the `plot` feature): the embedded font and the PNG encoder.
//!
//! Text is rendered with ab_glyph from DejaVu Sans, embedded by the `dejavu` crate, so no
//! system font or fontconfig is needed; plotters draws into an RGB buffer that the `png`
//! crate encodes.

use std::io::BufWriter;
use std::path::Path;
use std::sync::Once;

use plotters::style::FontStyle;

/// The family name the embedded font is registered under.
pub const FONT: &str = "sans-serif";

/// Why a PNG was not written.
#[derive(Debug)]
pub enum PngError {
    /// The file could not be written.
    Io(std::io::Error),
    /// The encoder failed.
    Encode(String),
}

/// Registers the embedded font (once per process).
pub fn register_font() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the embedded font did not load".to_string());
    });
    result
}

/// Writes a `width` x `height` RGB buffer to `path` as PNG.
pub fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<(), PngError> {
    let file = std::fs::File::create(path).map_err(PngError::Io)?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let encode = |e: png::EncodingError| PngError::Encode(e.to_string());
    let mut writer = encoder.write_header().map_err(encode)?;
    writer.write_image_data(rgb).map_err(encode)?;
    writer.finish().map_err(encode)
}
