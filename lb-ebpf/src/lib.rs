//! Empty library target: lets `lb-userspace` list this crate as a build-dependency so cargo
//! rebuilds the XDP object when it changes. The datapath itself is the binary (`main.rs`).
#![no_std]
