//! Terminal QR codes: two modules per character (Unicode half blocks), drawn
//! for a dark terminal background (light modules are printed, dark ones left
//! blank), with the quiet zone phone scanners need.

use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

/// `text` as a QR code in Unicode half blocks, or why it cannot be one.
pub fn render(text: &str) -> Result<String, String> {
    let code =
        QrCode::new(text.as_bytes()).map_err(|e| format!("cannot make a QR code of {} bytes: {e}", text.len()))?;
    Ok(code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).quiet_zone(true).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_renders_as_half_blocks_with_a_quiet_zone() {
        let link = "vless://0b6f0e6e-4c1e-4b8a-9d3e-2f1a7c5d9e10@vpn.example.com:443?encryption=none#alice";
        let qr = render(link).expect("qr");
        let lines: Vec<&str> = qr.lines().collect();
        assert!(lines.len() > 10, "{qr}");
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width), "every row is as wide");
        assert!(lines[0].chars().all(|c| c == '█'), "the quiet zone is light: {}", lines[0]);
        assert!(qr.chars().all(|c| matches!(c, '█' | '▀' | '▄' | ' ' | '\n')), "{qr}");
    }

    #[test]
    fn too_much_data_is_an_error_not_a_panic() {
        assert!(render(&"x".repeat(8000)).is_err());
    }
}
