//! A storage that lies: an object store wrapper that, at one chosen write, keeps only part of
//! what it was given (a torn write) or nothing at all while reporting success (a lost write),
//! the way a disk or an object store can after a power cut or a bug.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

/// What happens to the chosen write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Only this share of the bytes arrives.
    Torn(f64),
    /// Nothing arrives, and the write reports success.
    Lost,
}

/// Which write is faulted (counting every write from 0), and what writes there were.
#[derive(Debug, Default)]
pub struct Plan {
    pub fault: Option<(usize, Fault)>,
    /// Every write, in order.
    pub writes: Vec<String>,
    /// The write that was faulted.
    pub faulted: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    pub plan: Arc<Mutex<Plan>>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, fault: Option<(usize, Fault)>) -> FaultyStore {
        FaultyStore {
            inner,
            plan: Arc::new(Mutex::new(Plan {
                fault,
                ..Plan::default()
            })),
        }
    }

    /// Count a write to `location`; the fault to apply to it, if it is the chosen one.
    fn next(&self, location: &Path) -> Option<Fault> {
        let mut plan = self.plan.lock().unwrap();
        let n = plan.writes.len();
        plan.writes.push(location.to_string());
        match plan.fault {
            Some((at, fault)) if at == n => {
                plan.faulted = Some(location.to_string());
                Some(fault)
            }
            _ => None,
        }
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

fn torn(payload: PutPayload, share: f64) -> PutPayload {
    let bytes: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
    let keep = ((bytes.len() as f64) * share) as usize;
    PutPayload::from(bytes[..keep.min(bytes.len())].to_vec())
}

async fn put_faulted(
    inner: &Arc<dyn ObjectStore>,
    location: &Path,
    payload: PutPayload,
    opts: PutOptions,
    fault: Option<Fault>,
) -> Result<PutResult> {
    match fault {
        None => inner.put_opts(location, payload, opts).await,
        Some(Fault::Torn(share)) => inner.put_opts(location, torn(payload, share), opts).await,
        Some(Fault::Lost) => Ok(PutResult {
            e_tag: None,
            version: None,
        }),
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let fault = self.next(location);
        put_faulted(&self.inner, location, payload, opts, fault).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(Upload {
            store: self.clone(),
            location: location.clone(),
            parts: Vec::new(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A multipart upload: the parts are kept, and written as one put when it completes (where
/// the fault, if any, applies).
#[derive(Debug)]
struct Upload {
    store: FaultyStore,
    location: Path,
    parts: Vec<PutPayload>,
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.parts.push(data);
        Box::pin(async { Ok(()) })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let bytes: Vec<u8> = self
            .parts
            .iter()
            .flat_map(|p| p.iter().flat_map(|b| b.iter().copied()).collect::<Vec<_>>())
            .collect();
        let fault = self.store.next(&self.location);
        put_faulted(
            &self.store.inner,
            &self.location,
            PutPayload::from(bytes),
            PutOptions::default(),
            fault,
        )
        .await
    }

    async fn abort(&mut self) -> Result<()> {
        self.parts.clear();
        Ok(())
    }
}
