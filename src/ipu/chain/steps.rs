//! The network as a list of chain steps.

use crate::arch::{ArchConfig, LayerRole};
use crate::error::{Error, Result};
use crate::ipu::vocab::{NormSpec, Step};

/// The steps of `arch` from the stem to the head's norm (the classifier is left to
/// [`build`]), and the number of classes.
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
