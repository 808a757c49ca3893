//! The network as a list of chain steps.

use crate::arch::{ArchConfig, LayerRole};
use crate::error::{Error, Result};
use crate::ipu::vocab::{NormSpec, Step};

/// The steps of `arch` from the stem to the head's norm (the classifier is left to
/// [`super::build`]), and the number of classes.
pub fn steps_of(arch: &ArchConfig, res: usize, batch: usize) -> Result<(Vec<Step>, usize)> {
    let blocks = arch.blocks();
    let mut bi = 0usize;
    let mut in_block = false;
    let mut v = Vec::new();
    for l in arch.conv_layers(batch, res) {
        let shape = l.desc.validate()?;
        let kind = match l.role {
            LayerRole::Stem => "stem",
            LayerRole::Spatial if l.desc.group_size == 1 => "depthwise",
            LayerRole::Spatial => "grouped",
            _ => "pointwise",
        };
        let add_name = |b: &crate::arch::BlockSpec| format!("blocks.{}.{}.add", b.stage, b.index);
        match l.role {
            LayerRole::SeReduce => {
                v.push(Step::Se {
                    name: l.name.trim_end_matches(".conv_reduce").to_string(),
                    reduced: l.desc.out_channels,
                });
                continue;
            }
            LayerRole::SeExpand => continue,
            LayerRole::Classifier => return Ok((v, l.desc.out_channels)),
            LayerRole::Expand | LayerRole::Spatial if !in_block => {
                in_block = true;
                if blocks[bi].skip {
                    v.push(Step::Skip {
                        name: add_name(&blocks[bi]),
                        begin: true,
                    });
                }
            }
            _ => {}
        }
        v.push(Step::Conv {
            name: l.name.clone(),
            kind,
            shape,
            norm: l
                .norm
                .as_ref()
                .map(|nn| (nn.clone(), NormSpec::of(arch, l.role, l.desc.out_channels))),
            need_dx: l.role != LayerRole::Stem,
        });
        if l.role == LayerRole::Project {
            if blocks[bi].skip {
                v.push(Step::Skip {
                    name: add_name(&blocks[bi]),
                    begin: false,
                });
            }
            bi += 1;
            in_block = false;
        }
    }
    Err(Error::InvalidArgument(format!(
        "{}: no classifier",
        arch.name
    )))
}

/// A run of consecutive steps that recomputation and pipelining treat as one unit:
/// the stem, one MBConv block, or the head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSegment {
    /// `stem`, `blocks.{stage}.{index}` or `head` (`block` for a lone block's steps).
    pub name: String,
    /// Its steps.
    pub steps: std::ops::Range<usize>,
}

/// The network as steps, cut into segments.
#[derive(Clone, Debug)]
pub struct NetSteps {
    /// The steps from the stem to the head's norm.
    pub steps: Vec<Step>,
    /// Classes of the classifier after them.
    pub classes: usize,
    /// The segments, in order, covering the steps.
    pub segments: Vec<NetSegment>,
}

impl NetSteps {
    /// The index of the segment named `name`.
    pub fn segment(&self, name: &str) -> Option<usize> {
        self.segments.iter().position(|s| s.name == name)
    }
}

/// The segment a step belongs to, from its name.
fn segment_of(step: &Step) -> String {
    let name = match step {
        Step::Conv { name, .. } | Step::Se { name, .. } | Step::Skip { name, .. } => name,
    };
    if name == "conv_stem" {
        "stem".into()
    } else if name == "conv_head" {
        "head".into()
    } else if name.starts_with("blocks.") {
        name.split('.').take(3).collect::<Vec<_>>().join(".")
    } else {
        "block".into()
    }
}

/// Cuts `steps` into segments: runs of steps of the same segment name (`stem`,
/// `blocks.{stage}.{index}`, `head`, from the step names).
pub fn segments(steps: &[Step]) -> Vec<NetSegment> {
    let mut v: Vec<NetSegment> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let name = segment_of(s);
        match v.last_mut() {
            Some(last) if last.name == name => last.steps.end = i + 1,
            _ => v.push(NetSegment {
                name,
                steps: i..i + 1,
            }),
        }
    }
    v
}

/// The steps of `arch` at `res`, batch `batch`, cut into segments.
///
/// # Errors
/// As [`steps_of`]; [`Error::InvalidArgument`] for a resolution below 32 or a batch of
/// 0.
pub fn network_steps(arch: &ArchConfig, res: usize, batch: usize) -> Result<NetSteps> {
    if res < 32 || batch == 0 {
        return Err(Error::InvalidArgument(
            "--res must be at least 32 and --batch at least 1".into(),
        ));
    }
    let (steps, classes) = steps_of(arch, res, batch)?;
    let segments = segments(&steps);
    Ok(NetSteps {
        steps,
        classes,
        segments,
    })
}
