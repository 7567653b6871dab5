//! Partitions of a tensor's elements into the parts I_1 … I_k of Def 3.2.
//!
//! Two kinds cover everything the Python API offers:
//!
//! * [`Partition::Tiles`]: rectangular tiles of a fixed size per axis, with
//!   ragged tiles at the upper edges (torchao's `block_size`, extended to
//!   sizes that do not divide the shape). Per-tensor, per-axis, groups along
//!   an axis and 2-D blocks are all tiles. Part ids run row-major over the
//!   tile grid `ceil(shape / tile)`.
//! * [`Partition::Labels`]: any assignment of elements to parts `0..parts`.
//!
//! Kernels walk the flat (C-order) index range block by block and ask the
//! partition which part each element belongs to; calibration walks one part
//! at a time as a list of contiguous runs.

use crate::error::{CoreError, Result};

/// Which part each element of a tensor belongs to.
#[derive(Debug, Clone)]
pub enum Partition<'a> {
    /// Tiles of `tile[a]` elements along each axis `a` of `shape`.
    Tiles {
        /// The tensor's shape (an empty shape is a single element).
        shape: Vec<usize>,
        /// Tile extent per axis (≥ 1; larger than the axis means one tile).
        tile: Vec<usize>,
    },
    /// Element `i` belongs to part `ids[i]`, a value in `0..parts`.
    Labels {
        /// Part id of every element, in C order.
        ids: &'a [i64],
        /// Number of parts.
        parts: usize,
    },
}

/// A validated partition with the strides the kernels need.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// Number of elements.
    pub len: usize,
    /// Number of parts k.
    pub parts: usize,
    kind: Kind<'a>,
}

/// A cursor over the runs of one part: where parts are equal runs it
/// steps from part to part without dividing (10^5 groups of 128 made the
/// divisions of [`Plan::segment`] a visible share of quantizing them).
pub struct Segments<'p> {
    plan: &'p Plan<'p>,
    pos: usize,
    /// (part, elements left in it, run length) for equal runs.
    uniform: Option<(usize, usize, usize)>,
}

impl Segments<'_> {
    /// The part of the next element and how many elements from it on (at
    /// most `max`) share it; the cursor moves past them.
    #[inline(always)]
    pub fn next(&mut self, max: usize) -> (usize, usize) {
        match &mut self.uniform {
            Some((part, left, run)) => {
                let (j, len) = (*part, (*left).min(max));
                *left -= len;
                if *left == 0 {
                    *part += 1;
                    *left = *run;
                }
                (j, len)
            }
            None => {
                let (j, len) = self.plan.segment(self.pos, max);
                self.pos += len;
                (j, len)
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Kind<'a> {
    Tiles(Tiles),
    Labels(&'a [i64]),
}

#[derive(Debug, Clone)]
struct Tiles {
    shape: Vec<usize>,
    tile: Vec<usize>,
    grid: Vec<usize>,
    /// Stride of each axis in the part index (row-major over `grid`).
    grid_stride: Vec<usize>,
    /// Length of the last axis.
    row_len: usize,
    /// Tile extent along the last axis (clipped to `row_len`).
    row_tile: usize,
}

impl Tiles {
    /// Part index of element 0 of flat row `row` (all axes but the last).
    #[inline]
    fn row_base(&self, mut row: usize) -> usize {
        let d = self.shape.len();
        let mut base = 0;
        for a in (0..d.saturating_sub(1)).rev() {
            let i = row % self.shape[a];
            row /= self.shape[a];
            base += (i / self.tile[a]) * self.grid_stride[a];
        }
        base
    }
}

impl<'a> Plan<'a> {
    /// Validates `partition` for a tensor of `len` elements.
    pub fn new(partition: &Partition<'a>, len: usize) -> Result<Plan<'a>> {
        match partition {
            Partition::Tiles { shape, tile } => {
                let (shape, tile) = if shape.is_empty() {
                    (vec![1], vec![1])
                } else {
                    (shape.clone(), tile.clone())
                };
                if tile.len() != shape.len() {
                    return Err(CoreError::Shape(format!(
                        "partition: tile {tile:?} has {} axes but the tensor has shape {shape:?}",
                        tile.len()
                    )));
                }
                let numel: usize = shape.iter().product();
                if numel != len {
                    return Err(CoreError::Shape(format!(
                        "partition: shape {shape:?} holds {numel} elements but x has {len}"
                    )));
                }
                if let Some(a) = tile.iter().position(|&t| t == 0) {
                    return Err(CoreError::Value(format!(
                        "partition: tile extent along axis {a} must be ≥ 1, got 0 (tile {tile:?})"
                    )));
                }
                let tile: Vec<usize> = tile
                    .iter()
                    .zip(&shape)
                    .map(|(&t, &s)| t.min(s.max(1)))
                    .collect();
                let grid: Vec<usize> = shape
                    .iter()
                    .zip(&tile)
                    .map(|(&s, &t)| s.div_ceil(t))
                    .collect();
                let mut grid_stride = vec![1usize; grid.len()];
                for a in (0..grid.len().saturating_sub(1)).rev() {
                    grid_stride[a] = grid_stride[a + 1] * grid[a + 1];
                }
                let parts = grid.iter().product();
                let row_len = *shape.last().unwrap_or(&1);
                let row_tile = *tile.last().unwrap_or(&1);
                Ok(Plan {
                    len,
                    parts,
                    kind: Kind::Tiles(Tiles {
                        shape,
                        tile,
                        grid,
                        grid_stride,
                        row_len,
                        row_tile,
                    }),
                })
            }
            Partition::Labels { ids, parts } => {
                if ids.len() != len {
                    return Err(CoreError::Shape(format!(
                        "partition: labels has {} elements but x has {len}; they must match",
                        ids.len()
                    )));
                }
                let k = *parts as i64;
                if let Some(i) = ids.iter().position(|&l| l < 0 || l >= k) {
                    return Err(CoreError::Value(format!(
                        "partition: labels[{i}] = {} is not a part id in [0, {k})",
                        ids[i]
                    )));
                }
                Ok(Plan {
                    len,
                    parts: *parts,
                    kind: Kind::Labels(ids),
                })
            }
        }
    }

    /// For tiles: the (normalised) shape, tile extents (clipped to the
    /// shape) and the stride of each axis in the part index.
    pub fn tiles(&self) -> Option<(&[usize], &[usize], &[usize])> {
        match &self.kind {
            Kind::Tiles(t) => Some((&t.shape, &t.tile, &t.grid_stride)),
            Kind::Labels(_) => None,
        }
    }

    /// For labels: the part id of every element.
    pub fn labels(&self) -> Option<&'a [i64]> {
        match &self.kind {
            Kind::Labels(ids) => Some(ids),
            Kind::Tiles(_) => None,
        }
    }

    /// The tile grid (`ceil(shape / tile)`), or `[parts]` for labels.
    pub fn grid(&self) -> Vec<usize> {
        match &self.kind {
            Kind::Tiles(t) => t.grid.clone(),
            Kind::Labels(_) => vec![self.parts],
        }
    }

    /// Whether elements come in runs of one part along rows (tiles wider
    /// than one element along the last axis, or rows of one element), so
    /// that [`Plan::segment`] applies.
    #[inline]
    pub fn has_segments(&self) -> bool {
        match &self.kind {
            Kind::Tiles(t) => t.row_tile > 1 || t.row_len == 1,
            Kind::Labels(_) => false,
        }
    }

    /// The run length L when part j is exactly the flat elements
    /// `[jL, (j+1)L)`: rows, or groups along the last axis that divide the
    /// rows evenly. Calibration then takes parts in contiguous batches.
    pub fn uniform_runs(&self) -> Option<usize> {
        let Kind::Tiles(t) = &self.kind else {
            return None;
        };
        let d = t.shape.len();
        let rows_only = t.tile[..d - 1].iter().all(|&e| e == 1);
        let divides = t.row_tile > 0 && t.row_len.is_multiple_of(t.row_tile);
        (self.len > 0 && rows_only && divides).then_some(t.row_tile)
    }

    /// The part of element `start` and how many elements from `start` on
    /// (at most `max`) share it. Only where [`Plan::has_segments`].
    #[inline]
    pub fn segment(&self, start: usize, max: usize) -> (usize, usize) {
        match &self.kind {
            Kind::Tiles(t) => {
                let (row, col) = (start / t.row_len, start % t.row_len);
                let tile = col / t.row_tile;
                let end = ((tile + 1) * t.row_tile).min(t.row_len);
                (t.row_base(row) + tile, (end - col).min(max))
            }
            Kind::Labels(_) => (0, 0),
        }
    }

    /// The runs of one part from element `start` on, one after another (see
    /// [`Segments::next`]). Only where [`Plan::has_segments`].
    #[inline]
    pub fn segments(&self, start: usize) -> Segments<'_> {
        let uniform = self.uniform_runs().map(|run| {
            let part = start / run;
            (part, run - (start - part * run), run)
        });
        Segments {
            plan: self,
            pos: start,
            uniform,
        }
    }

    /// Writes the part id of each element of `start..start + out.len()`.
    #[inline]
    pub fn parts_of(&self, start: usize, out: &mut [u32]) {
        match &self.kind {
            Kind::Tiles(t) => {
                let mut done = 0;
                while done < out.len() {
                    let pos = start + done;
                    let (row, col) = (pos / t.row_len, pos % t.row_len);
                    let base = t.row_base(row);
                    let run = (t.row_len - col).min(out.len() - done);
                    if t.row_tile == 1 {
                        for (k, o) in out[done..done + run].iter_mut().enumerate() {
                            *o = (base + col + k) as u32;
                        }
                    } else {
                        for (k, o) in out[done..done + run].iter_mut().enumerate() {
                            *o = (base + (col + k) / t.row_tile) as u32;
                        }
                    }
                    done += run;
                }
            }
            Kind::Labels(ids) => {
                for (o, &l) in out.iter_mut().zip(&ids[start..]) {
                    *o = l as u32;
                }
            }
        }
    }

    /// Calls `f(start, len)` for each contiguous run of flat indices that
    /// make up tile `part`. Only for tiles (labels go through
    /// [`Plan::members`]).
    pub fn tile_runs(&self, part: usize, f: &mut dyn FnMut(usize, usize)) {
        let Kind::Tiles(t) = &self.kind else {
            return;
        };
        let d = t.shape.len();
        if t.tile[..d - 1].iter().all(|&e| e == 1) {
            // One run along a row (per-channel rows, groups along the last
            // axis): no odometer.
            let g_last = t.grid[d - 1];
            if g_last == 0 {
                return;
            }
            let (row, col) = (part / g_last, (part % g_last) * t.row_tile);
            let run = t.row_tile.min(t.row_len - col);
            if run > 0 {
                f(row * t.row_len + col, run);
            }
            return;
        }
        // The tile's box: [lo, hi) along each axis.
        let mut rest = part;
        let mut lo = vec![0usize; d];
        let mut hi = vec![0usize; d];
        for a in (0..d).rev() {
            let g = rest % t.grid[a];
            rest /= t.grid[a];
            lo[a] = g * t.tile[a];
            hi[a] = ((g + 1) * t.tile[a]).min(t.shape[a]);
        }
        let mut strides = vec![1usize; d];
        for a in (0..d.saturating_sub(1)).rev() {
            strides[a] = strides[a + 1] * t.shape[a + 1];
        }
        let run = hi[d - 1] - lo[d - 1];
        if run == 0 || lo.iter().zip(&hi).any(|(l, h)| l >= h) {
            return;
        }
        // Odometer over the leading axes.
        let mut idx = lo.clone();
        loop {
            let start: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
            f(start, run);
            let mut a = d - 1;
            loop {
                if a == 0 {
                    return;
                }
                a -= 1;
                idx[a] += 1;
                if idx[a] < hi[a] {
                    break;
                }
                idx[a] = lo[a];
            }
        }
    }

    /// For labels: the element indices of each part, as offsets into one
    /// index list (a counting sort by label; indices ascend within a part).
    pub fn members(&self) -> Option<(Vec<usize>, Vec<usize>)> {
        let Kind::Labels(ids) = &self.kind else {
            return None;
        };
        let mut offsets = vec![0usize; self.parts + 1];
        for &l in ids.iter() {
            offsets[l as usize + 1] += 1;
        }
        for j in 0..self.parts {
            offsets[j + 1] += offsets[j];
        }
        let mut next = offsets.clone();
        let mut index = vec![0usize; ids.len()];
        for (i, &l) in ids.iter().enumerate() {
            index[next[l as usize]] = i;
            next[l as usize] += 1;
        }
        Some((offsets, index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_of_all(plan: &Plan<'_>) -> Vec<u32> {
        let mut out = vec![0u32; plan.len];
        plan.parts_of(0, &mut out);
        out
    }

    #[test]
    fn ragged_groups_and_blocks() {
        let p = Partition::Tiles {
            shape: vec![2, 5],
            tile: vec![1, 2],
        };
        let plan = Plan::new(&p, 10).unwrap();
        assert_eq!(plan.parts, 6);
        assert_eq!(parts_of_all(&plan), vec![0, 0, 1, 1, 2, 3, 3, 4, 4, 5]);
        let p = Partition::Tiles {
            shape: vec![3, 3],
            tile: vec![2, 2],
        };
        let plan = Plan::new(&p, 9).unwrap();
        assert_eq!(parts_of_all(&plan), vec![0, 0, 1, 0, 0, 1, 2, 2, 3]);
        let mut runs = Vec::new();
        plan.tile_runs(0, &mut |s, n| runs.push((s, n)));
        assert_eq!(runs, vec![(0, 2), (3, 2)]);
        runs.clear();
        plan.tile_runs(3, &mut |s, n| runs.push((s, n)));
        assert_eq!(runs, vec![(8, 1)]);
        assert!(plan.has_segments());
        assert_eq!(plan.segment(0, 9), (0, 2));
        assert_eq!(plan.segment(1, 9), (0, 1));
        assert_eq!(plan.segment(2, 9), (1, 1));
        assert_eq!(plan.segment(3, 1), (0, 1));
    }

    /// The cursor gives the same runs as `segment`, for equal runs (rows,
    /// dividing groups) and for ragged groups and blocks, from any start and
    /// in any step sizes.
    #[test]
    fn segment_cursor_matches_segment() {
        for (shape, tile) in [
            (vec![4, 8], vec![1, 4]),
            (vec![3, 7], vec![1, 7]),
            (vec![2, 3, 6], vec![1, 1, 2]),
            (vec![2, 5], vec![1, 2]),
            (vec![5, 6], vec![2, 4]),
            (vec![4], vec![3]),
        ] {
            let len: usize = shape.iter().product();
            let p = Partition::Tiles { shape, tile };
            let plan = Plan::new(&p, len).unwrap();
            for start in 0..len {
                for step in [1, 2, 3, 5, 64] {
                    let mut cursor = plan.segments(start);
                    let mut pos = start;
                    while pos < len {
                        let max = step.min(len - pos);
                        let want = plan.segment(pos, max);
                        assert_eq!(
                            cursor.next(max),
                            want,
                            "{p:?} start {start} step {step} at {pos}"
                        );
                        pos += want.1;
                    }
                }
            }
        }
    }

    #[test]
    fn per_column() {
        let p = Partition::Tiles {
            shape: vec![2, 3],
            tile: vec![2, 1],
        };
        let plan = Plan::new(&p, 6).unwrap();
        assert_eq!(parts_of_all(&plan), vec![0, 1, 2, 0, 1, 2]);
    }
}
