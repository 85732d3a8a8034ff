//! Page states, owners, and the per-page metadata word that records the host's and the
//! hypervisor's view of every RAM page.

use crate::vm::VmHandle;

/// The state of a page as seen by one component (host, hyp or a guest). pKVM's vocabulary.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(u8)]
pub enum PageState {
    /// The component owns the page and nobody else may access it.
    Owned = 0,
    /// The component owns the page and has shared it with at least one borrower.
    SharedOwned = 1,
    /// The component may access the page, which another component owns and shared with it.
    SharedBorrowed = 2,
    /// The component has no access to the page.
    NoPage = 3,
    /// Guests only: the page behind this IPA was taken back by force and scrubbed; the guest's
    /// next access faults instead of reading someone else's data.
    Poisoned = 4,
}

impl PageState {
    const fn from_code(code: u8) -> Self {
        match code {
            0 => Self::Owned,
            1 => Self::SharedOwned,
            2 => Self::SharedBorrowed,
            4 => Self::Poisoned,
            _ => Self::NoPage,
        }
    }
}

/// Who owns a page.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Owner {
    /// The host kernel (VMID 0).
    Host,
    /// The hypervisor itself.
    Hyp,
    /// A guest, by VM handle.
    Guest(VmHandle),
}

/// Metadata of one RAM page: 8 bytes, like pKVM's `struct hyp_page`.
///
/// An all-zero word means "host Owned, hyp NoPage, no pins, no guest shares" (the hyp state is
/// stored complemented for that reason), so zeroed storage is already the boot state of RAM.
/// The whole word is protected by the host lock; the hyp fields are additionally only written
/// with the hyp lock held (see the lock order in [`crate::mem`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
#[repr(C)]
pub struct PageMeta {
    host_state: u8,
    hyp_state_complement: u8,
    hyp_pins: u16,
    guest_shares: u32,
}

/// Pin count marking the hypervisor's own memory (image, pool): pinned for ever, so it can
/// never be donated back to the host.
pub const PIN_RESERVED: u16 = u16::MAX;

impl PageMeta {
    /// The host's state of the page.
    pub const fn host_state(&self) -> PageState {
        PageState::from_code(self.host_state)
    }
    /// The hypervisor's state of the page.
    pub const fn hyp_state(&self) -> PageState {
        PageState::from_code(self.hyp_state_complement ^ PageState::NoPage as u8)
    }
    /// How many times the hypervisor pinned the page (it is mapped and in use at EL2).
    pub const fn hyp_pins(&self) -> u16 {
        self.hyp_pins
    }
    /// With how many guest mappings the host shares the page.
    pub const fn guest_shares(&self) -> u32 {
        self.guest_shares
    }
    /// Whether the host and hyp states are `host` and `hyp`: two byte compares (the stored codes
    /// are only ever written from a [`PageState`], so they are canonical), no decoding.
    #[inline]
    pub(crate) fn states_are(&self, host: PageState, hyp: PageState) -> bool {
        self.host_state == host as u8
            && self.hyp_state_complement == hyp as u8 ^ PageState::NoPage as u8
    }
    pub(crate) fn set_host_state(&mut self, s: PageState) {
        self.host_state = s as u8;
    }
    pub(crate) fn set_hyp_state(&mut self, s: PageState) {
        self.hyp_state_complement = s as u8 ^ PageState::NoPage as u8;
    }
    pub(crate) fn set_hyp_pins(&mut self, n: u16) {
        self.hyp_pins = n;
    }
    pub(crate) fn set_guest_shares(&mut self, n: u32) {
        self.guest_shares = n;
    }
}

const _: () = assert!(core::mem::size_of::<PageMeta>() == 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_metadata_is_host_owned_hyp_nopage() {
        let m = PageMeta::default();
        assert_eq!(m.host_state(), PageState::Owned);
        assert_eq!(m.hyp_state(), PageState::NoPage);
        assert_eq!((m.hyp_pins(), m.guest_shares()), (0, 0));
    }

    #[test]
    fn every_state_round_trips_through_the_metadata_word() {
        for s in [
            PageState::Owned,
            PageState::SharedOwned,
            PageState::SharedBorrowed,
            PageState::NoPage,
        ] {
            let mut m = PageMeta::default();
            m.set_host_state(s);
            m.set_hyp_state(s);
            assert_eq!((m.host_state(), m.hyp_state()), (s, s));
        }
    }

    #[test]
    fn states_are_agrees_with_the_decoded_states() {
        use PageState::*;
        let all = [Owned, SharedOwned, SharedBorrowed, NoPage, Poisoned];
        for (h, y) in all.iter().flat_map(|h| all.iter().map(move |y| (*h, *y))) {
            let mut m = PageMeta::default();
            m.set_host_state(h);
            m.set_hyp_state(y);
            for (a, b) in all.iter().flat_map(|a| all.iter().map(move |b| (*a, *b))) {
                assert_eq!(
                    m.states_are(a, b),
                    (a, b) == (h, y),
                    "{h:?}/{y:?} vs {a:?}/{b:?}"
                );
            }
        }
    }
}
