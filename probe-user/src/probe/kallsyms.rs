//! Naming kernel function addresses from /proc/kallsyms (the filesystem's
//! `->page_mkwrite` the function-hook backends record as an address).

/// Text symbols, sorted by address.
#[derive(Debug, Default)]
pub struct Kallsyms {
    symbols: Vec<(u64, String)>,
}

/// A function is assumed no longer than this: an address further past the
/// nearest symbol is not named after it.
const MAX_FUNCTION_BYTES: u64 = 1 << 16;

impl Kallsyms {
    /// Reads /proc/kallsyms; empty if unreadable (then nothing is named).
    pub fn read() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/kallsyms").unwrap_or_default())
    }

    /// Parses kallsyms text: `address type name [module]`.
    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                // Zero addresses: kptr_restrict hides them.
                (address != 0 && matches!(kind, "t" | "T")).then(|| (address, name.to_string()))
            })
            .collect();
        symbols.sort_unstable();
        Self { symbols }
    }

    /// The function holding `address` (kprobes may report an address just
    /// past the entry, e.g. after an ENDBR instruction).
    pub fn name_of(&self, address: u64) -> Option<&str> {
        let index = self.symbols.partition_point(|(start, _)| *start <= address);
        let (start, name) = self.symbols.get(index.checked_sub(1)?)?;
        (address - start < MAX_FUNCTION_BYTES).then_some(name.as_str())
    }

    /// Whether a text symbol of this name exists (module functions too).
    pub fn has_function(&self, name: &str) -> bool {
        self.symbols.iter().any(|(_, symbol)| symbol == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81200000 t do_page_mkwrite
ffffffff81100000 T filemap_page_mkwrite
ffffffff81300000 D some_data
0000000000000000 T hidden
ffffffffc0680000 t ext4_page_mkwrite\t[ext4]
";

    #[test]
    fn names_an_address_by_the_function_that_holds_it() {
        let symbols = Kallsyms::parse(SAMPLE);
        assert_eq!(
            symbols.name_of(0xffffffff81100000),
            Some("filemap_page_mkwrite")
        );
        assert_eq!(
            symbols.name_of(0xffffffff81100004),
            Some("filemap_page_mkwrite")
        );
        assert_eq!(
            symbols.name_of(0xffffffffc0680010),
            Some("ext4_page_mkwrite")
        );
        // Data symbols and hidden addresses are ignored; below the first
        // symbol or far past the last nothing is named.
        assert_eq!(symbols.name_of(0xffffffff81300000), None);
        assert_eq!(symbols.name_of(0x1000), None);
        assert!(symbols.has_function("ext4_page_mkwrite"));
        assert!(!symbols.has_function("some_data") && !symbols.has_function("hidden"));
        assert_eq!(symbols.name_of(0xffffffffc0780000), None);
    }
}
