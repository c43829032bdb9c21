//! Runs the real XDP object in the kernel on hand-made frames (BPF_PROG_TEST_RUN): the verifier,
//! maps and aya-log records are all real, only the NIC is missing.
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{TestRun, TestRunOptions, Xdp},
};
use aya_log::EbpfLogger;
use lb::xdp::{self, XdpStats};
use lb_common::{Malformed, PacketClass, PortKey, TrafficCounters, map_names};

/// XDP verdicts (`enum xdp_action`).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// One loaded program with its own fresh maps.
pub struct XdpRunner {
    ebpf: Ebpf,
    program: &'static str,
}

/// Output of one run.
#[derive(Debug)]
pub struct RunResult {
    pub action: u32,
    /// The frame after the program (rewrites/encapsulation show here).
    pub frame: Vec<u8>,
    /// Kernel-measured duration per repetition.
    pub duration: std::time::Duration,
}

impl XdpRunner {
    /// Loads `program` from the embedded object (the verifier runs here).
    pub fn load(program: &'static str) -> Result<Self> {
        let ebpf = xdp::load(program).with_context(|| format!("loading {program}"))?;
        Ok(Self { ebpf, program })
    }

    fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(self.program)
            .context("program vanished")?
            .try_into()?)
    }

    pub fn run(&mut self, frame: &[u8]) -> Result<RunResult> {
        self.run_repeat(frame, 1)
    }

    pub fn run_repeat(&mut self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        // Room for encapsulation to grow the frame.
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.program()?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let res = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        out.truncate(res.data_size_out as usize);
        Ok(RunResult {
            action: res.return_value,
            frame: out,
            duration: res.duration,
        })
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Runs `frame` `repeat` times in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES), as if
    /// the frames arrived on interface `ingress_ifindex`: verdicts take effect (`XDP_TX` sends
    /// them out of it). The kernel resets the data pointers between runs but not the bytes, so
    /// this suits programs that do not rewrite frames (e.g. `lb_xdp_tx` as a traffic generator).
    /// Returns the kernel-reported mean duration per frame.
    pub fn run_live_on(
        &mut self,
        frame: &[u8],
        repeat: u32,
        ingress_ifindex: Option<u32>,
    ) -> Result<std::time::Duration> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        if let Some(ifindex) = ingress_ifindex {
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        }
        let prog = self.program()?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        if ingress_ifindex.is_some() {
            opts.ctx_in = Some(&ctx);
        }
        opts.attrs = aya::programs::TestRunAttrs::new().xdp_live_frames(64);
        let res = prog
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN (live frames)")?;
        Ok(res.duration)
    }

    pub fn stats(&self) -> Result<XdpStats> {
        Ok(xdp::read_stats(&self.ebpf)?)
    }

    /// Zeroes the parser counters (classes, malformed reasons, per-port stats), so one loaded
    /// program can serve many single-frame checks; loading is the slow part.
    pub fn reset_counters(&mut self) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for (name, len) in [
            (map_names::PACKET_CLASSES, PacketClass::COUNT),
            (map_names::MALFORMED, Malformed::COUNT),
        ] {
            let mut array: PerCpuArray<&mut MapData, u64> =
                self.ebpf.map_mut(name).context(name)?.try_into()?;
            for index in 0..len {
                array.set(index, PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
            }
        }
        let mut ports: PerCpuHashMap<&mut MapData, PortKey, TrafficCounters> = self
            .ebpf
            .map_mut(map_names::PORT_STATS)
            .context("PORT_STATS")?
            .try_into()?;
        let keys: Vec<PortKey> = ports.keys().collect::<Result<_, _>>()?;
        for key in keys {
            ports.remove(&key)?;
        }
        Ok(())
    }

    /// Starts collecting the program's aya-log records; read them with [`LogCapture::lines`].
    pub fn capture_logs(&mut self) -> Result<LogCapture> {
        let sink = LineSink::default();
        let reader = EbpfLogger::init_with_logger(&mut self.ebpf, sink.clone())
            .context("initialising the aya-log reader")?;
        Ok(LogCapture { reader, sink })
    }
}

/// Reads the aya-log ring buffer synchronously into a list of lines.
pub struct LogCapture {
    reader: EbpfLogger<LineSink>,
    sink: LineSink,
}

impl LogCapture {
    /// Every record logged so far (drains the ring buffer first).
    pub fn lines(&mut self) -> Vec<String> {
        self.reader.flush();
        self.sink.lines()
    }
}

/// A `log::Log` that keeps formatted records.
#[derive(Clone, Default)]
pub struct LineSink {
    lines: Arc<Mutex<Vec<String>>>,
}

impl LineSink {
    /// Every record received so far, formatted.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl log::Log for LineSink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}
