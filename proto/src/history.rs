//! The window of a history read (`messages:sync`), shared by the gateway and the worker.

/// Which messages a history read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The newest ones.
    Newest,
    /// The ones after this id, oldest first.
    After(u64),
    /// The ones before this id (scrolling up).
    Before(u64),
}

impl Window {
    /// The window of a request's ids: `after` wins over `before`; neither means the newest.
    pub fn new(after: Option<u64>, before: Option<u64>) -> Self {
        match (after, before) {
            (Some(after), _) => Self::After(after),
            (None, Some(before)) => Self::Before(before),
            (None, None) => Self::Newest,
        }
    }

    /// The request ids `(after, before)` of this window.
    pub fn ids(self) -> (Option<u64>, Option<u64>) {
        match self {
            Self::Newest => (None, None),
            Self::After(id) => (Some(id), None),
            Self::Before(id) => (None, Some(id)),
        }
    }

    /// Whether message `id` lies in the window.
    pub fn contains(self, id: u64) -> bool {
        match self {
            Self::Newest => true,
            Self::After(after) => id > after,
            Self::Before(before) => id < before,
        }
    }

    /// Whether the messages nearest the window's anchor are the oldest (after an id) rather
    /// than the newest.
    pub fn anchored_at_oldest(self) -> bool {
        matches!(self, Self::After(_))
    }

    /// Cuts `items` (in id order) to `keep`, keeping those nearest the anchor; whether any
    /// were cut.
    pub fn cut<T>(self, items: &mut Vec<T>, keep: usize) -> bool {
        if items.len() <= keep {
            return false;
        }
        if self.anchored_at_oldest() {
            items.truncate(keep);
        } else {
            items.drain(..items.len() - keep);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_keeps_the_messages_nearest_its_anchor() {
        let cut = |window: Window| {
            let mut ids = vec![1, 2, 3, 4, 5];
            let cut = window.cut(&mut ids, 2);
            (ids, cut)
        };
        assert_eq!(cut(Window::After(0)), (vec![1, 2], true));
        assert_eq!(cut(Window::Before(9)), (vec![4, 5], true));
        assert_eq!(cut(Window::Newest), (vec![4, 5], true));
        assert!(!Window::Newest.cut(&mut vec![1, 2], 2));
        assert_eq!(Window::new(Some(3), Some(9)), Window::After(3));
        assert_eq!(Window::new(None, Some(9)).ids(), (None, Some(9)));
        assert!(Window::Before(5).contains(4) && !Window::Before(5).contains(5));
    }
}
