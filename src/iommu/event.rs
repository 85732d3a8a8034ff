//! Event records (Arm IHI 0070, section 7.3), decoded into what a user needs to know: which
//! device (StreamID), what went wrong (the event type), where (input address) and which way.

/// C_BAD_STREAMID: the StreamID is outside the stream table (no device configured there).
pub const C_BAD_STREAMID: u8 = 0x02;
/// C_BAD_STE: the STE is invalid (V = 0) or malformed.
pub const C_BAD_STE: u8 = 0x04;
/// F_WALK_EABT: the table walk hit an external abort.
pub const F_WALK_EABT: u8 = 0x0b;
/// F_TRANSLATION: no valid stage-2 translation (a page the host does not own).
pub const F_TRANSLATION: u8 = 0x10;
/// F_ADDR_SIZE: the address exceeds the configured input or output size.
pub const F_ADDR_SIZE: u8 = 0x11;
/// F_ACCESS: access flag fault.
pub const F_ACCESS: u8 = 0x12;
/// F_PERMISSION: the stage-2 permissions forbid the access (e.g. a write to a read-only page).
pub const F_PERMISSION: u8 = 0x13;

/// Bytes per event record.
pub const EVENT_BYTES: u64 = 32;

/// One decoded event.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FaultRecord {
    /// The event type (e.g. [`F_TRANSLATION`]).
    pub kind: u8,
    /// The StreamID of the device (PCI requester ID: bus << 8 | devfn).
    pub stream_id: u32,
    /// The input address of the transaction (the IPA, for stage-2-only streams); 0 for events
    /// that carry none (configuration errors).
    pub address: u64,
    /// The transaction was a read (the device read memory, e.g. a DMA to the device).
    pub read: bool,
    /// The fault was raised by stage 2.
    pub stage2: bool,
}

impl FaultRecord {
    /// Decodes the four 64-bit words of a record.
    pub fn decode(words: [u64; 4]) -> FaultRecord {
        let kind = (words[0] & 0xff) as u8;
        let stream_id = (words[0] >> 32) as u32;
        // Word 3 (bits [63:32] of the second dword): RnW = bit 3, S2 = bit 7.
        let w3 = words[1] >> 32;
        let has_address = matches!(
            kind,
            F_WALK_EABT | F_TRANSLATION | F_ADDR_SIZE | F_ACCESS | F_PERMISSION
        );
        FaultRecord {
            kind,
            stream_id,
            address: if has_address { words[2] } else { 0 },
            read: has_address && w3 & (1 << 3) != 0,
            stage2: has_address && w3 & (1 << 7) != 0,
        }
    }
}

/// How many decoded records the hyp keeps until the host reads them.
pub const FAULT_LOG_CAPACITY: usize = 64;

/// The decoded records not yet read by the host, oldest first. When full, the *oldest* record is
/// dropped (and counted): after a flood, the most recent faults are the ones a user needs.
pub struct FaultLog {
    records: [FaultRecord; FAULT_LOG_CAPACITY],
    head: usize,
    len: usize,
    dropped: u64,
}

impl Default for FaultLog {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultLog {
    /// An empty log.
    pub const fn new() -> Self {
        FaultLog {
            records: [FaultRecord {
                kind: 0,
                stream_id: 0,
                address: 0,
                read: false,
                stage2: false,
            }; FAULT_LOG_CAPACITY],
            head: 0,
            len: 0,
            dropped: 0,
        }
    }

    /// Appends `r`, dropping the oldest record if full.
    pub fn push(&mut self, r: FaultRecord) {
        if self.len == FAULT_LOG_CAPACITY {
            self.head = (self.head + 1) % FAULT_LOG_CAPACITY;
            self.len -= 1;
            self.dropped += 1;
        }
        self.records[(self.head + self.len) % FAULT_LOG_CAPACITY] = r;
        self.len += 1;
    }

    /// Removes and returns the oldest record.
    pub fn pop(&mut self) -> Option<FaultRecord> {
        if self.len == 0 {
            return None;
        }
        let r = self.records[self.head];
        self.head = (self.head + 1) % FAULT_LOG_CAPACITY;
        self.len -= 1;
        Some(r)
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no record is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records dropped because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// `DMA_FAULTS_READ` x1: a record is returned.
pub const REPLY_VALID: u64 = 1 << 63;
/// `DMA_FAULTS_READ` x1: the device was reading memory.
pub const REPLY_READ: u64 = 1 << 40;
/// `DMA_FAULTS_READ` x1: stage 2 raised the fault.
pub const REPLY_STAGE2: u64 = 1 << 41;

/// The x1..x3 of a `DMA_FAULTS_READ` reply (docs/abi.md):
/// - x1: bit 63 = a record follows; bits [31:0] StreamID, [39:32] event type, bit 40 read,
///   bit 41 stage 2 (all 0 when no record is waiting);
/// - x2: the input address (IPA) of the faulting transaction;
/// - x3: bits [31:0] records still waiting after this one, bits [63:32] event-queue overflows
///   since boot (saturating).
pub fn fault_reply(record: Option<FaultRecord>, waiting: usize, overflows: u64) -> [u64; 3] {
    let counters =
        (waiting.min(u32::MAX as usize) as u64) | overflows.min(u64::from(u32::MAX)) << 32;
    match record {
        None => [0, 0, counters],
        Some(r) => {
            let mut x1 = REPLY_VALID | u64::from(r.stream_id) | u64::from(r.kind) << 32;
            if r.read {
                x1 |= REPLY_READ;
            }
            if r.stage2 {
                x1 |= REPLY_STAGE2;
            }
            [x1, r.address, counters]
        }
    }
}
