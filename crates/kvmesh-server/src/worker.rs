//! An engine worker: one thread that owns an [`Engine`] and loops on its `step()`.
//!
//! Nothing else touches the engine, so there is no lock around it and continuous batching is
//! whole: every request of the worker runs in the same step. The async side talks to it over
//! a bounded command channel ([`WorkerHandle::submit`]) and gets each request's outputs on the
//! request's own channel ([`WorkerEvent`]).
//!
//! The loop, per iteration:
//!
//! 1. take commands (blocking only when the engine is idle);
//! 2. abort every request whose receiver is gone (the client disconnected): its blocks return
//!    to the pool before the next step computes anything for it;
//! 3. run one step;
//! 4. note which requests the scheduler admitted (queue time), send each output to its
//!    request, record latencies;
//! 5. publish the step's KV events ([`KvEventPublisher`]) and refresh the gauges.
//!
//! A failing step (a bug, never bad input: input is checked at `add_request`) fails the
//! requests it holds with a 500 and the worker carries on with an empty engine.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kvmesh_core::{ExtraKeys, KvEvent};
use kvmesh_engine::{Engine, EngineError, FinishReason, RequestId, SamplingParams};
use kvmesh_index::WorkerId;
use tokio::sync::mpsc::UnboundedSender;

use crate::events::KvEventPublisher;
use crate::metrics::WorkerMetrics;
use crate::openai::finish_reason_name;

/// One choice of one request, for a worker to run.
#[derive(Debug)]
pub struct Submission {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Sampling and stopping.
    pub params: SamplingParams,
    /// Sequence-wide hash keys (the cache salt).
    pub extra: ExtraKeys,
    /// The choice's index in the response.
    pub choice: usize,
    /// When the request reached the server (latencies are measured from it).
    pub arrival: Instant,
    /// Where the outputs go. Dropping the receiver aborts the choice.
    pub outputs: UnboundedSender<WorkerEvent>,
}

/// One step's output for one choice.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceOutput {
    /// The choice.
    pub choice: usize,
    /// The token generated.
    pub token: Option<u32>,
    /// Text released with it.
    pub text: String,
    /// Set on the choice's last output.
    pub finished: Option<FinishReason>,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// What a worker sends back about one choice.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEvent {
    /// A step's output.
    Output(ChoiceOutput),
    /// The engine refused or failed the choice.
    Failed {
        /// The choice.
        choice: usize,
        /// Why.
        error: EngineError,
    },
}

enum Command {
    Submit(Box<Submission>),
    AbortAll,
    Stop,
}

/// The async side's handle on a worker thread.
#[derive(Debug)]
pub struct WorkerHandle {
    id: WorkerId,
    commands: SyncSender<Command>,
    metrics: Arc<WorkerMetrics>,
    max_len: usize,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Submit(s) => write!(f, "Submit(choice {})", s.choice),
            Command::AbortAll => write!(f, "AbortAll"),
            Command::Stop => write!(f, "Stop"),
        }
    }
}

impl WorkerHandle {
    /// Starts worker `id`'s thread over `engine`, with room for `queue` commands in flight.
    /// The thread ends once every handle is dropped and its requests are done; join it with
    /// the returned handle.
    pub fn spawn(
        id: WorkerId,
        engine: Engine,
        publisher: Box<dyn KvEventPublisher>,
        queue: usize,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (commands, rx) = mpsc::sync_channel(queue.max(1));
        let metrics = Arc::new(WorkerMetrics::default());
        let max_len = engine.max_len();
        let thread_metrics = Arc::clone(&metrics);
        let thread = std::thread::Builder::new()
            .name(format!("kvmesh-worker-{}", id.0))
            .spawn(move || {
                WorkerLoop {
                    id,
                    engine,
                    publisher,
                    metrics: thread_metrics,
                    live: HashMap::new(),
                    events: Vec::new(),
                }
                .run(rx)
            })?;
        let handle = WorkerHandle {
            id,
            commands,
            metrics,
            max_len,
        };
        Ok((handle, thread))
    }

    /// The worker's id.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// The worker's metrics.
    pub fn metrics(&self) -> &WorkerMetrics {
        &self.metrics
    }

    /// The longest prompt plus output the worker's engine accepts.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Hands a choice to the worker; gives it back when the command queue is full or the
    /// worker is gone.
    pub fn submit(&self, s: Submission) -> Result<(), Box<Submission>> {
        match self.commands.try_send(Command::Submit(Box::new(s))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Command::Submit(s)))
            | Err(TrySendError::Disconnected(Command::Submit(s))) => Err(s),
            Err(_) => unreachable!("a Submit command comes back as sent"),
        }
    }

    /// Aborts every request of the worker (a shutdown that ran out of time). Their streams
    /// end with finish reason `abort`.
    pub fn abort_all(&self) {
        // Blocking is fine: the worker drains commands every step.
        let _ = self.commands.send(Command::AbortAll);
    }

    /// Aborts every request and ends the worker thread.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }
}

struct Live {
    outputs: UnboundedSender<WorkerEvent>,
    choice: usize,
    arrival: Instant,
    last_token: Option<Instant>,
    admitted: bool,
}

struct WorkerLoop {
    id: WorkerId,
    engine: Engine,
    publisher: Box<dyn KvEventPublisher>,
    metrics: Arc<WorkerMetrics>,
    live: HashMap<RequestId, Live>,
    events: Vec<KvEvent>,
}

impl WorkerLoop {
    fn run(mut self, rx: Receiver<Command>) {
        self.refresh_gauges();
        loop {
            if self.live.is_empty() {
                match rx.recv() {
                    Ok(Command::Stop) | Err(_) => break, // told to, or every handle dropped
                    Ok(c) => self.handle(c),
                }
            }
            let mut stop = false;
            while let Ok(c) = rx.try_recv() {
                stop |= matches!(c, Command::Stop);
                self.handle(c);
            }
            if stop {
                break;
            }
            self.abort_disconnected();
            if self.engine.has_unfinished() {
                self.step();
            }
            self.publish_events();
            self.refresh_gauges();
        }
        tracing::debug!(worker = self.id.0, "worker stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit(s) => {
                let prompt_len = s.prompt.len();
                match self
                    .engine
                    .add_request_with_keys(s.prompt, s.params, &s.extra)
                {
                    Ok(id) => {
                        self.metrics
                            .prompt_tokens
                            .fetch_add(prompt_len as u64, Relaxed);
                        self.live.insert(
                            id,
                            Live {
                                outputs: s.outputs,
                                choice: s.choice,
                                arrival: s.arrival,
                                last_token: None,
                                admitted: false,
                            },
                        );
                    }
                    Err(error) => {
                        let _ = s.outputs.send(WorkerEvent::Failed {
                            choice: s.choice,
                            error,
                        });
                    }
                }
            }
            Command::AbortAll | Command::Stop => {
                for (id, l) in self.live.drain() {
                    self.engine.abort(id);
                    self.metrics.count_finish("abort");
                    let _ = l.outputs.send(WorkerEvent::Output(ChoiceOutput {
                        choice: l.choice,
                        token: None,
                        text: String::new(),
                        finished: Some(FinishReason::Aborted),
                        cached_tokens: 0,
                    }));
                }
            }
        }
    }

    /// Aborts the requests nobody listens to any more.
    fn abort_disconnected(&mut self) {
        let engine = &mut self.engine;
        let metrics = &self.metrics;
        let id = self.id;
        self.live.retain(|&r, l| {
            if !l.outputs.is_closed() {
                return true;
            }
            engine.abort(r);
            metrics.count_finish("abort");
            tracing::debug!(worker = id.0, request = r, "client gone: aborted");
            false
        });
    }

    fn step(&mut self) {
        // Requests the scheduler admits in this step waited until it began.
        let started = Instant::now();
        let outputs = match self.engine.step() {
            Ok(o) => o,
            Err(error) => {
                tracing::error!(worker = self.id.0, %error, "engine step failed; failing its requests");
                for (id, l) in self.live.drain() {
                    self.engine.abort(id);
                    let _ = l.outputs.send(WorkerEvent::Failed {
                        choice: l.choice,
                        error: error.clone(),
                    });
                }
                return;
            }
        };
        for (&id, l) in self.live.iter_mut().filter(|(_, l)| !l.admitted) {
            if !self.engine.is_waiting(id) {
                l.admitted = true;
                let waited = started.saturating_duration_since(l.arrival);
                self.metrics.queue.observe(waited.as_secs_f64());
            }
        }
        let now = Instant::now();
        for out in outputs {
            let Some(l) = self.live.get_mut(&out.id) else {
                continue;
            };
            if out.token.is_some() {
                let since = l.last_token.unwrap_or(l.arrival);
                let gap = now.duration_since(since).as_secs_f64();
                if l.last_token.is_none() {
                    self.metrics.ttft.observe(gap);
                } else {
                    self.metrics.itl.observe(gap);
                }
                l.last_token = Some(now);
            }
            let _ = l.outputs.send(WorkerEvent::Output(ChoiceOutput {
                choice: l.choice,
                token: out.token,
                text: out.text,
                finished: out.finished,
                cached_tokens: out.cached_tokens,
            }));
            if let Some(reason) = out.finished {
                self.metrics
                    .e2e
                    .observe(now.duration_since(l.arrival).as_secs_f64());
                self.metrics.count_finish(finish_reason_name(reason));
                self.live.remove(&out.id);
            }
        }
    }

    fn publish_events(&mut self) {
        self.engine.drain_kv_events(&mut self.events);
        if !self.events.is_empty() {
            self.publisher.publish(self.id, &self.events);
            self.events.clear();
        }
    }

    fn refresh_gauges(&self) {
        let s = self.engine.stats();
        let m = &self.metrics;
        m.generation_tokens.store(s.generated_tokens, Relaxed);
        m.preemptions.store(s.preemptions, Relaxed);
        m.prefix_cache_queries.store(s.pool.query_tokens, Relaxed);
        m.prefix_cache_hits.store(s.pool.hit_tokens, Relaxed);
        m.running.store(self.engine.num_running() as u64, Relaxed);
        m.waiting.store(self.engine.num_waiting() as u64, Relaxed);
        m.blocks_used.store(s.pool.active as u64, Relaxed);
        m.blocks_cached.store(s.pool.cached as u64, Relaxed);
        m.blocks_free.store(s.pool.free as u64, Relaxed);
        m.blocks_total.store(s.pool.capacity as u64, Relaxed);
    }
}
