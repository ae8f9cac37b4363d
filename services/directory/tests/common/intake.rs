//! A fake intake (relay.intake.v1.IntakeService) answering GetIncident only, in process on a
//! fixed port: it knows some incidents (NOT_FOUND for the others), can answer slowly, and can
//! be stopped (connections refused: UNAVAILABLE) and started again on the same port.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use relay_proto::intake::{
    GetIncidentRequest, GetIncidentResponse, Incident,
    intake_service_server::{IntakeService, IntakeServiceServer},
};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    known: Mutex<HashSet<String>>,
    delay: Mutex<Duration>,
    calls: AtomicUsize,
}

struct Svc(Arc<State>);

#[tonic::async_trait]
impl IntakeService for Svc {
    async fn get_incident(
        &self,
        request: Request<GetIncidentRequest>,
    ) -> Result<Response<GetIncidentResponse>, Status> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.0.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let id = request.into_inner().incident_id;
        if self.0.known.lock().unwrap().contains(&id) {
            Ok(Response::new(GetIncidentResponse {
                incident: Some(Incident {
                    incident_id: id,
                    ..Incident::default()
                }),
            }))
        } else {
            Err(Status::not_found(format!("no incident {id}")))
        }
    }
}

/// The fake.
pub struct FakeIntake {
    port: u16,
    state: Arc<State>,
    running: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl FakeIntake {
    /// A started fake that knows `incidents`.
    pub async fn started(incidents: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Self {
            port: listener.local_addr().unwrap().port(),
            state: Arc::default(),
            running: Mutex::new(None),
        };
        fake.state
            .known
            .lock()
            .unwrap()
            .extend(incidents.iter().map(|id| (*id).to_owned()));
        fake.serve(listener);
        fake
    }

    /// Where it listens.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// GetIncident calls answered so far.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Answers after `delay` from now on.
    pub fn answer_after(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// Stops serving and closes its port (calls fail with UNAVAILABLE).
    pub async fn stop(&self) {
        let stop = self.running.lock().unwrap().take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        // Until the listener is closed, a connection could still be accepted.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the fake intake did not stop");
    }

    /// Serves again on the same port.
    pub async fn start(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        *self.running.lock().unwrap() = Some(stop);
        let svc = Svc(Arc::clone(&self.state));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(IntakeServiceServer::new(svc))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
    }
}
