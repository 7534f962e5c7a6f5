//! The transformer: the live config generation and the metrics. Each ext_proc stream takes
//! the generation current when it starts, so one exchange never sees two configs.

use gatehouse_common::reload::Reloader;

use crate::exchange::Exchange;
use crate::stats::Stats;
use crate::transformation::Transformations;

#[derive(Clone)]
pub struct Transformer {
    pub config: Reloader<Transformations>,
    pub stats: Stats,
}

impl Transformer {
    /// Starts an exchange for the transformation `name` (none: nothing to do).
    pub fn exchange(&self, name: Option<&str>) -> Exchange {
        Exchange::new(self.config.load(), name)
    }
}
