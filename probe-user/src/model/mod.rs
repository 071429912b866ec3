//! From kernel records to what the front ends show: typed events
//! (`events`), the pure aggregate of files, pages and writers
//! (`aggregate`), file identity and names (`file_handle`, `names`,
//! `paths`), durability calls per file (`durability`), and what a backend
//! cannot see (`blind_spots`).

pub mod aggregate;
pub mod blind_spots;
pub mod call_sites;
pub mod clock;
pub mod durability;
pub mod events;
pub mod file_handle;
pub mod file_record;
pub mod file_state;
pub mod hand_over;
pub mod names;
pub mod page_marks;
pub mod page_set;
pub mod paths;
pub mod report_filter;
pub mod writers;
