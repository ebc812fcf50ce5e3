//! A synthetic hand phantom as the detector sees it: dose-proportional 16-bit values
//! through soft tissue and bones (metacarpals, phalanges with joint spaces), with quantum
//! noise and a collimated field. Seeded, so a test sees the same image every time.

use rand::{RngExt, SeedableRng};

/// A raw detector image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawImage {
    /// Columns.
    pub columns: u16,
    /// Rows.
    pub rows: u16,
    /// Row by row, dose-proportional, 14 bits used.
    pub pixels: Vec<u16>,
}

/// A capsule (a segment with a radius) in the unit square: a bone or a finger.
#[derive(Debug, Clone, Copy)]
struct Capsule {
    a: (f32, f32),
    b: (f32, f32),
    r: f32,
}

impl Capsule {
    /// Thickness of the capsule along the beam at `p` (a cylinder's chord), 0 outside.
    fn thickness(&self, p: (f32, f32)) -> f32 {
        let (dx, dy) = (self.b.0 - self.a.0, self.b.1 - self.a.1);
        let len2 = dx * dx + dy * dy;
        let t = (((p.0 - self.a.0) * dx + (p.1 - self.a.1) * dy) / len2).clamp(0.0, 1.0);
        let (cx, cy) = (self.a.0 + t * dx - p.0, self.a.1 + t * dy - p.1);
        let d2 = cx * cx + cy * cy;
        if d2 >= self.r * self.r { 0.0 } else { 2.0 * (self.r * self.r - d2).sqrt() }
    }

    fn bounds(&self) -> (f32, f32, f32, f32) {
        (
            self.a.0.min(self.b.0) - self.r,
            self.a.1.min(self.b.1) - self.r,
            self.a.0.max(self.b.0) + self.r,
            self.a.1.max(self.b.1) + self.r,
        )
    }
}

/// The fingers' and thumb's directions: base point, tip point.
const DIGITS: [((f32, f32), (f32, f32)); 5] = [
    ((0.36, 0.50), (0.30, 0.14)),
    ((0.45, 0.47), (0.44, 0.08)),
    ((0.54, 0.47), (0.57, 0.10)),
    ((0.62, 0.50), (0.69, 0.18)),
    ((0.30, 0.66), (0.14, 0.44)),
];

fn lerp(a: (f32, f32), b: (f32, f32), t: f32) -> (f32, f32) {
    (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
}

/// A hand, PA, `columns` x `rows`, with noise from `seed`.
pub fn hand(columns: u16, rows: u16, seed: u64) -> RawImage {
    let mut soft = vec![
        // The palm and wrist as overlapping thick capsules.
        Capsule { a: (0.47, 0.58), b: (0.50, 0.78), r: 0.17 },
        Capsule { a: (0.50, 0.80), b: (0.50, 1.05), r: 0.12 },
    ];
    let mut bone = vec![
        // Radius and ulna.
        Capsule { a: (0.44, 0.86), b: (0.44, 1.05), r: 0.030 },
        Capsule { a: (0.57, 0.87), b: (0.58, 1.05), r: 0.024 },
    ];
    for (i, (base, tip)) in DIGITS.iter().enumerate() {
        let thumb = i == 4;
        soft.push(Capsule { a: *base, b: *tip, r: if thumb { 0.045 } else { 0.038 } });
        // Metacarpal from the wrist to the digit's base, then phalanges with joint gaps.
        let wrist = (0.44 + 0.035 * i as f32, 0.80);
        let mc_end = lerp(*base, *tip, 0.05);
        bone.push(Capsule { a: lerp(wrist, mc_end, 0.08), b: mc_end, r: 0.018 });
        let segments: &[(f32, f32)] =
            if thumb { &[(0.12, 0.52), (0.58, 0.90)] } else { &[(0.10, 0.47), (0.52, 0.74), (0.79, 0.95)] };
        for &(s, e) in segments {
            bone.push(Capsule { a: lerp(*base, *tip, s), b: lerp(*base, *tip, e), r: 0.014 });
        }
    }
    let (c, r) = (usize::from(columns), usize::from(rows));
    // Attenuation per unit of normalised thickness: soft tissue and bone at about 55 kV.
    let (mu_soft, mu_bone) = (4.0_f32, 18.0_f32);
    let open_field = 12_000.0_f32;
    let scatter = 150.0_f32;
    let mut thickness_soft = vec![0f32; c * r];
    let mut thickness_bone = vec![0f32; c * r];
    let scale = columns.max(rows) as f32;
    for (caps, grid) in [(&soft, &mut thickness_soft), (&bone, &mut thickness_bone)] {
        for cap in caps.iter() {
            // Only the pixels within the capsule's box.
            let (x0, y0, x1, y1) = cap.bounds();
            let px = |v: f32, n: usize| ((v * scale).max(0.0) as usize).min(n);
            for y in px(y0, r)..px(y1, r) {
                for x in px(x0, c)..px(x1, c) {
                    let p = (x as f32 / scale, y as f32 / scale);
                    let t = cap.thickness(p);
                    let cell = &mut grid[y * c + x];
                    // Soft tissue overlaps (the palm and fingers): the thickest wins.
                    *cell = cell.max(t);
                }
            }
        }
    }
    // Gaussian noise from a table, picked by a fast generator: quantum noise has a
    // standard deviation of the square root of the count.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let table: Vec<f32> = (0..4096)
        .map(|_| {
            let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random_range(0.0..1.0));
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect();
    let mut state = seed | 1;
    let margin_x = c / 30;
    let margin_y = r / 30;
    let mut pixels = vec![0u16; c * r];
    for y in 0..r {
        for x in 0..c {
            let i = y * c + x;
            let inside = x >= margin_x && x < c - margin_x && y >= margin_y && y < r - margin_y;
            let mean = if inside {
                open_field * (-(mu_soft * thickness_soft[i] + mu_bone * thickness_bone[i])).exp() + scatter
            } else {
                scatter
            };
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = table[(state as usize) & 4095] * mean.sqrt();
            pixels[i] = (mean + noise).clamp(0.0, 16_383.0) as u16;
        }
    }
    RawImage { columns, rows, pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bone_lets_through_less_than_soft_tissue_and_air_the_most() {
        let img = hand(500, 600, 3);
        let at = |u: f32, v: f32| {
            let (x, y) = ((u * 600.0) as usize, (v * 600.0) as usize);
            img.pixels[y * 500 + x]
        };
        let air = at(0.1, 0.9);
        // Across the middle finger: soft tissue beside the bone, then the bone.
        let finger_soft = at(0.4706, 0.30);
        let finger_bone = at(0.4456, 0.30);
        let collimated = at(0.01, 0.5);
        assert!(air > finger_soft && finger_soft > finger_bone, "{air} {finger_soft} {finger_bone}");
        assert!(collimated < finger_bone, "outside the field only scatter arrives: {collimated}");
        assert_eq!(img, hand(500, 600, 3), "the same seed gives the same image");
    }
}
