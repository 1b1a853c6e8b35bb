"""The rule registry: every hardware rule the model implements, with a stable ID and its section.

Intel sections are given in two numberings: the June 2016 SDM (order no. 325384-059US), which the
model is pinned to, and the 2019–2024 editions ("current"; e.g. the 2016 caching section §28.3 is
§29.4 there, VM entries moved from chapter 26 to 27, VM exits from 27 to 28, the VMX instruction
reference from 30 to 31). The newest editions (2025 on) renumber the VMX chapters again (the
address-translation chapter is 31 there); those numbers are not recorded. Vol. 2 instruction pages
have no section numbers and are cited by name. AMD rules cite the APM Vol. 2 (pub. 24593),
chapter 15. "unconfirmed" marks a number or reading that could not be checked in the manual text.

The code that implements a rule names its ID; tests reuse the IDs (style rule 2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    id: str
    vendor: str  # "intel" | "amd"
    section: str  # pinned edition (SDM 2016 / APM)
    section_current: str  # current numbering ("" where it is the same document as `section`)
    summary: str


_INTEL: list[tuple[str, str, str, str]] = [
    # id, 2016 section, current section, summary
    (
        "intel.tag.vpid",
        "§28.1",
        "§29.1",
        "Current VPID is 0 outside VMX non-root operation and when 'enable VPID' is 0.",
    ),
    (
        "intel.tag.pcid",
        "§4.10.1",
        "§4.10.1",
        "Current PCID is CR3[11:0] when CR4.PCIDE = 1, else 000H; nothing else is cached then.",
    ),
    (
        "intel.tag.ep4ta",
        "§28.3.1",
        "§29.4.1",
        "EP4TA is EPTP bits 51:12 only; memory type, walk length and A/D bits are not part of it.",
    ),
    (
        "intel.create.linear",
        "§28.3.2",
        "§29.4.2",
        "Linear mappings are made only while EPT is not in use, tagged (VPID, PCID).",
    ),
    (
        "intel.create.guest-physical",
        "§28.3.2",
        "§29.4.2",
        "Guest-physical mappings are made only while EPT is in use, tagged by EP4TA only.",
    ),
    (
        "intel.create.combined",
        "§28.3.2",
        "§29.4.2",
        "Combined mappings are made only while EPT is in use, tagged (VPID, PCID, EP4TA); "
        "no combined paging-structure-cache entries while CR0.PG = 0.",
    ),
    (
        "intel.create.present",
        "§4.10.2.3",
        "§4.10.2.3",
        "Nothing is cached from a not-present paging-structure or EPT entry.",
    ),
    (
        "intel.create.speculative",
        "§4.10.2.3",
        "§4.10.2.3",
        "Translations and PSC entries may be filled at any time for any address whose walk "
        "succeeds, including speculatively.",
    ),
    (
        "intel.create.global",
        "§4.10.2.4",
        "§4.10.2.4",
        "A translation is global only if CR4.PGE = 1 and the leaf has G = 1.",
    ),
    (
        "intel.use.linear",
        "§28.3.2",
        "§29.4.2",
        "Linear mappings are used only while EPT is not in use: current VPID and PCID, or "
        "global translations of the current VPID under any PCID.",
    ),
    (
        "intel.use.guest-physical",
        "§28.3.2",
        "§29.4.2",
        "Guest-physical mappings are used only while EPT is in use, for the current EP4TA, "
        "including to translate guest paging-structure references.",
    ),
    (
        "intel.use.combined",
        "§28.3.2",
        "§29.4.2",
        "Combined mappings are used only while EPT is in use: current VPID, PCID and EP4TA, or "
        "global ones of the current VPID and EP4TA under any PCID.",
    ),
    (
        "intel.retain.ept-toggle",
        "§28.3.2",
        "§29.4.2",
        "Linear mappings survive (unused) while EPT is on and combined ones while it is off; a "
        "different EPTP hides combined mappings without removing them.",
    ),
    (
        "intel.stale.use",
        "§4.10.4.4",
        "§4.10.4.4",
        "A cached entry may be kept and used after the paging structure it came from changes, "
        "until an invalidation removes it.",
    ),
    (
        "intel.psc.contents",
        "§4.10.3.1",
        "§4.10.3.1",
        "PSC entries map upper address bits to the physical address of the next table, with "
        "accumulated rights; none for PS = 1 leaves; never global.",
    ),
    (
        "intel.tlb.contents",
        "§4.10.2.2",
        "§4.10.2.2",
        "A translation holds the frame and rights (R/W and U/S ANDed, XD ORed); combined ones hold "
        "both guest and EPT rights.",
    ),
    (
        "intel.split-pages",
        "§4.10.2.3",
        "§4.10.2.3",
        "A large page may be cached as smaller pages; INVLPG and #PF remove every piece.",
    ),
    (
        "intel.native.scope",
        "§28.3.3.1",
        "§29.4.3.1",
        "Native invalidations (INVLPG, INVPCID, MOV to CR, #PF) remove linear and combined "
        "mappings of the current VPID only (combined for all EP4TAs), never guest-physical ones.",
    ),
    (
        "intel.invlpg.page",
        "Vol. 2A INVLPG; §4.10.4.1",
        "Vol. 2A INVLPG; §4.10.4.1",
        "INVLPG removes the translations for the page under the current PCID and global "
        "translations for the page under any PCID.",
    ),
    (
        "intel.invlpg.psc",
        "§4.10.4.1",
        "§4.10.4.1",
        "INVLPG removes all PSC entries of the current PCID, whatever address they cover.",
    ),
    (
        "intel.invlpg.noncanonical",
        "Vol. 2A INVLPG",
        "Vol. 2A INVLPG",
        "INVLPG of a non-canonical address in 64-bit mode is a no-op.",
    ),
    (
        "intel.invpcid.address",
        "Vol. 2A INVPCID; §4.10.4.1",
        "Vol. 2A INVPCID; §4.10.4.1",
        "INVPCID type 0 removes the non-global translations for (PCID, address) and the PSC "
        "entries on that address's path.",
    ),
    (
        "intel.invpcid.single",
        "Vol. 2A INVPCID",
        "Vol. 2A INVPCID",
        "INVPCID type 1 removes every mapping of the PCID except global translations.",
    ),
    (
        "intel.invpcid.all-globals",
        "Vol. 2A INVPCID",
        "Vol. 2A INVPCID",
        "INVPCID type 2 removes every mapping of every PCID, global translations included.",
    ),
    (
        "intel.invpcid.all",
        "Vol. 2A INVPCID",
        "Vol. 2A INVPCID",
        "INVPCID type 3 removes every mapping of every PCID except global translations.",
    ),
    (
        "intel.invpcid.faults",
        "Vol. 2A INVPCID; §25.3",
        "Vol. 2A INVPCID; §26.3",
        "INVPCID: #UD when unsupported or 'enable INVPCID' = 0 in non-root; #GP for CPL > 0, "
        "type > 3, descriptor bits 63:12, PCID != 0 with PCIDE = 0 (types 0/1), non-canonical "
        "address (type 0).",
    ),
    (
        "intel.mov-cr3.flush",
        "§4.10.4.1",
        "§4.10.4.1",
        "MOV to CR3 removes the non-global translations and all PSC entries of the new PCID "
        "(PCID 000H when PCIDE = 0), even when CR3 does not change.",
    ),
    (
        "intel.mov-cr3.noflush",
        "§4.10.4.1; Vol. 2A MOV CR",
        "§4.10.4.1; Vol. 2A MOV CR",
        "With CR4.PCIDE = 1 and source bit 63 set, MOV to CR3 removes nothing.",
    ),
    (
        "intel.mov-cr3.faults",
        "Vol. 2A MOV CR",
        "Vol. 2A MOV CR",
        "MOV to CR3: #GP for reserved bits; bit 63 with PCIDE = 0 is treated as reserved "
        "(KVM's reading; unconfirmed in the SDM text).",
    ),
    (
        "intel.mov-cr4.pge",
        "§4.10.4.1",
        "§4.10.4.1",
        "MOV to CR4 changing PGE removes every translation and PSC entry of every PCID, "
        "global translations included.",
    ),
    (
        "intel.mov-cr4.pcide-clear",
        "§4.10.4.1",
        "§4.10.4.1",
        "MOV to CR4 clearing PCIDE removes everything, as a PGE change does.",
    ),
    (
        "intel.mov-cr4.pcide-set",
        "§4.10.1; §4.10.4.1",
        "§4.10.1; §4.10.4.1",
        "MOV to CR4 setting PCIDE removes nothing; #GP unless CR3[11:0] = 0 and in IA-32e mode.",
    ),
    (
        "intel.mov-cr4.pae-smep",
        "§4.10.4.1",
        "§4.10.4.1",
        "MOV to CR4 changing PAE or setting SMEP removes every translation and PSC entry of the "
        "current PCID (global ones tagged with it included: reading unconfirmed); clearing PAE in "
        "IA-32e mode is #GP.",
    ),
    (
        "intel.mov-cr4.other",
        "§4.10.4.1",
        "§4.10.4.1",
        "MOV to CR4 changing PSE, clearing SMEP, or changing SMAP/PKE removes nothing.",
    ),
    (
        "intel.mov-cr0.pg-clear",
        "§4.10.4.1; Vol. 2A MOV CR",
        "§4.10.4.1; Vol. 2A MOV CR",
        "MOV to CR0 clearing PG removes everything of every PCID; #GP with PCIDE = 1 or in 64-bit "
        "mode.",
    ),
    (
        "intel.mov-cr0.other",
        "§4.10.4.1",
        "§4.10.4.1",
        "MOV to CR0 setting PG or changing WP/CD/NW removes nothing (literal reading: identity "
        "combined translations made with PG = 0 survive).",
    ),
    (
        "intel.task-switch",
        "§4.10.4.1; §25.2",
        "§4.10.4.1; §26.2",
        "A task switch that loads CR3 acts as MOV to CR3 with PCIDE = 0; it is #GP in IA-32e "
        "mode and always a VM exit in non-root operation.",
    ),
    (
        "intel.pf.invalidate",
        "§4.10.4.1",
        "§4.10.4.1",
        "A page fault removes the translations that would be used for the faulting address and "
        "only the PSC entries on its path (current PCID).",
    ),
    (
        "intel.pf.intercepted",
        "§25.2; §4.10.4.1",
        "§26.2; §4.10.4.1",
        "A #PF that causes a VM exit (exception bitmap) is modelled as invalidating nothing "
        "(unconfirmed; the more retentive reading).",
    ),
    (
        "intel.ept-violation.invalidate",
        "§28.3.3.1",
        "§29.4.3.1",
        "An EPT violation removes the guest-physical mappings used to translate the GPA (current "
        "EP4TA) and, if it came from a linear address, that address's combined mappings.",
    ),
    (
        "intel.ept-misconfig",
        "§28.2.3.1; §28.3.2",
        "§29.3.3.1; §29.4.2",
        "Misconfigured EPT entries (e.g. write without read) are never cached; an EPT "
        "misconfiguration invalidates nothing.",
    ),
    (
        "intel.vmentry.no-vpid",
        "§26.3.2.5; §28.3.3.1",
        "§27.3.2.5; §29.4.3.1",
        "VM entry with 'enable VPID' = 0 removes linear and combined mappings of VPID 0000H "
        "(all PCIDs, all EP4TAs), never guest-physical ones.",
    ),
    (
        "intel.vmexit.no-vpid",
        "§27.5.5; §28.3.3.1",
        "§28.5.5; §29.4.3.1",
        "VM exit from a VMCS with 'enable VPID' = 0 removes linear and combined mappings of VPID "
        "0000H, never guest-physical ones.",
    ),
    (
        "intel.vmtransition.vpid",
        "§26.3.2.5; §27.5.5; §28.3.3.2",
        "§27.3.2.5; §28.5.5; §29.4.3.2",
        "VM entries and exits with 'enable VPID' = 1 remove nothing.",
    ),
    (
        "intel.vmtransition.cr-load",
        "§4.11.1; §26.3.2.5",
        "§4.11.1; §27.3.2.5",
        "CR0/CR3/CR4 loads done by VM entry and exit do not apply MOV-to-CR invalidations.",
    ),
    (
        "intel.vmentry.checks",
        "§26.2.1.1",
        "§27.2.1.1",
        "VM entry fails (VMfailValid 7) with 'enable VPID' and VPID 0, an invalid EPTP, or "
        "unrestricted guest without EPT; VMLAUNCH/VMRESUME check the launch state (4, 5).",
    ),
    (
        "intel.invvpid.address",
        "§28.3.3.1; §30.3 INVVPID",
        "§29.4.3.1; §31.3 INVVPID",
        "INVVPID type 0 removes the linear and combined mappings of the VPID that would translate "
        "the address, for all PCIDs and EP4TAs, globals included; only PSC entries on its path.",
    ),
    (
        "intel.invvpid.single",
        "§28.3.3.1; §30.3 INVVPID",
        "§29.4.3.1; §31.3 INVVPID",
        "INVVPID type 1 removes every linear and combined mapping of the VPID.",
    ),
    (
        "intel.invvpid.all",
        "§28.3.3.1; §30.3 INVVPID",
        "§29.4.3.1; §31.3 INVVPID",
        "INVVPID type 2 removes the linear and combined mappings of every VPID except 0000H.",
    ),
    (
        "intel.invvpid.single-globals",
        "§28.3.3.1; §30.3 INVVPID",
        "§29.4.3.1; §31.3 INVVPID",
        "INVVPID type 3 removes the VPID's mappings except global translations (and, in the "
        "retentive reading, the PSC entries used for them).",
    ),
    (
        "intel.invvpid.checks",
        "§30.3 INVVPID; App. A.10",
        "§31.3 INVVPID; App. A.10",
        "INVVPID fails with VMfail(28) for a type the capability MSR does not report, descriptor "
        "bits 63:16 set, VPID 0 (types 0, 1, 3), or a non-canonical address (type 0).",
    ),
    (
        "intel.invvpid.no-guest-physical",
        "§28.3.3.2",
        "§29.4.3.2",
        "INVVPID is never required to remove guest-physical mappings.",
    ),
    (
        "intel.invept.single",
        "§28.3.3.1; §30.3 INVEPT",
        "§29.4.3.1; §31.3 INVEPT",
        "INVEPT type 1 removes the guest-physical and combined mappings of EP4TA = EPTP[51:12], "
        "for all VPIDs and PCIDs, never linear ones.",
    ),
    (
        "intel.invept.all",
        "§28.3.3.1; §30.3 INVEPT",
        "§29.4.3.1; §31.3 INVEPT",
        "INVEPT type 2 removes the guest-physical and combined mappings of every EP4TA.",
    ),
    (
        "intel.invept.checks",
        "§30.3 INVEPT; §26.2.1.1; App. A.10",
        "§31.3 INVEPT; §27.2.1.1; App. A.10",
        "INVEPT fails with VMfail(28) for an unsupported type or, for type 1, an EPTP a VM entry "
        "would reject.",
    ),
    (
        "intel.vmx.fail",
        "§30.2",
        "§31.2",
        "VMX instructions fail with VMfailValid(n) when a current VMCS exists, else "
        "VMfailInvalid; INVEPT/INVVPID need no current VMCS.",
    ),
    (
        "intel.vmx.ud",
        "§30.3",
        "§31.3",
        "VMX instructions are #UD outside VMX operation, in compatibility mode, or when the "
        "capability is absent; #GP(0) at CPL > 0.",
    ),
    (
        "intel.vmx.nonroot-exit",
        "§25.1.2",
        "§26.1.2",
        "INVEPT, INVVPID, VMXON, VMXOFF, VMPTRLD, VMCLEAR, VMWRITE, VMLAUNCH and VMRESUME cause a "
        "VM exit unconditionally in non-root operation.",
    ),
    (
        "intel.vmx.conditional-exit",
        "§25.1.3; §25.3",
        "§26.1.3; §26.3",
        "INVLPG exits iff 'INVLPG exiting'; INVPCID is #UD without 'enable INVPCID' and else "
        "exits iff 'INVLPG exiting'; MOV to CR3 exits iff 'CR3-load exiting'; MOV to CR0/CR4 "
        "exits when it changes a host-owned bit; an exiting instruction flushes nothing.",
    ),
    ("intel.vmxon-vmxoff", "§28.3.3.2", "§29.4.3.2", "VMXON and VMXOFF remove nothing."),
    (
        "intel.vmcs-ops",
        "§28.3.3.1 (absence)",
        "§29.4.3.1 (absence)",
        "VMPTRLD, VMCLEAR and VMWRITE of the EPTP or VPID remove nothing; they only change "
        "which tags are current.",
    ),
    (
        "intel.vmfunc.eptp-switch",
        "§25.5.5.3",
        "§26.5.6.3 (unconfirmed)",
        "EPTP switching with 'enable VPID' = 0 removes combined mappings of VPID 0000H; with "
        "VPID it removes nothing; the new EP4TA becomes current.",
    ),
    (
        "intel.smi",
        "§34.14.1",
        "unconfirmed",
        "An SMI (default treatment) removes linear and combined mappings of VPID 0000H.",
    ),
    (
        "intel.rsm",
        "§34.14.2",
        "unconfirmed",
        "RSM (default treatment) removes linear and combined mappings of every VPID.",
    ),
    (
        "intel.smm.dual-monitor",
        "§34.15.2.5; §34.15.4.5",
        "unconfirmed",
        "Dual-monitor treatment: an SMM VM exit removes VPID 0000H's linear and combined "
        "mappings; the VM entry that returns from SMM removes those of every VPID.",
    ),
    (
        "intel.getsec",
        "Vol. 2D GETSEC",
        "Vol. 2D GETSEC",
        "GETSEC leaves that 'invalidate processor TLB(s)' are modelled as removing everything "
        "(scope relative to VPID and EPT unconfirmed).",
    ),
    (
        "intel.reset",
        "§28.3.3.1",
        "§29.4.3.1",
        "Power-up and RESET remove every linear, guest-physical and combined mapping.",
    ),
    (
        "intel.init",
        "§28.3.3.1 (absence)",
        "§29.4.3.1 (absence)",
        "INIT is not listed as invalidating anything (unconfirmed); it is a VM exit in non-root "
        "operation and blocked in VMX root operation.",
    ),
    (
        "intel.multiprocessor",
        "§4.10.5; §28.3.3.4",
        "§4.10.5; §29.4.3.4",
        "Invalidations are local to the logical processor that performs them.",
    ),
    (
        "intel.hv.flush-gpa-space",
        "§TLFS 6.0b, HvCallFlushGuestPhysicalAddressSpace",
        "§TLFS 6.0b, HvCallFlushGuestPhysicalAddressSpace",
        "Hyper-V as L0 (not the SDM): the hypercall invalidates, on every processor, the "
        "guest-physical and combined mappings (and their paging-structure caches) derived from "
        "the EPT hierarchy it names (as INVEPT single-context would on each).",
    ),
    (
        "intel.hv.flush-gpa-list",
        "§TLFS 6.0b, HvCallFlushGuestPhysicalAddressList",
        "§TLFS 6.0b, HvCallFlushGuestPhysicalAddressList",
        "Hyper-V as L0 (not the SDM): the hypercall invalidates, on every processor, the "
        "guest-physical and combined mappings of that EPT hierarchy whose GPA footprint (a large "
        "page's whole page) lies in a range it lists, and the guest-physical paging-structure "
        "caches whose region does; nothing else.",
    ),
]


_AMD: list[tuple[str, str, str]] = [
    # id, APM Vol. 2 section, summary
    (
        "amd.tag.asid",
        "§15.16",
        "Every TLB entry made in guest mode is tagged with the guest's ASID (and PCID when the "
        "guest's CR4.PCIDE is set).",
    ),
    (
        "amd.asid.host-zero",
        "§15.16.1; §15.6",
        "ASID 0 is the host: the current ASID is 0 whenever no guest runs; #VMEXIT makes it 0.",
    ),
    (
        "amd.asid.per-cpu",
        "§15.25.1",
        "ASIDs are per logical processor: the same ASID on another processor may name stale "
        "entries of another address space.",
    ),
    (
        "amd.vmrun.checks",
        "§15.5.1",
        "VMRUN fails with #VMEXIT(VMEXIT_INVALID) for ASID 0 (or one beyond the supported count) "
        "and for nested paging without support.",
    ),
    (
        "amd.vmrun.no-flush",
        "§15.5.1; §15.16",
        "VMRUN and #VMEXIT load control registers but flush nothing by themselves.",
    ),
    ("amd.tlb-control.nothing", "§15.16.1 Table 15-9", "TLB_CONTROL 00h: VMRUN flushes nothing."),
    (
        "amd.tlb-control.flush-all",
        "§15.16.1 Table 15-9",
        "TLB_CONTROL 01h: VMRUN flushes the entire TLB, every ASID (the host's included), global "
        "and non-global.",
    ),
    (
        "amd.tlb-control.flush-asid",
        "§15.16.1 Table 15-9",
        "TLB_CONTROL 03h (FlushByAsid): VMRUN flushes every entry of the VMCB's ASID, global "
        "included.",
    ),
    (
        "amd.tlb-control.flush-asid-local",
        "§15.16.1 Table 15-9",
        "TLB_CONTROL 07h (FlushByAsid): VMRUN flushes the VMCB's ASID's non-global entries.",
    ),
    (
        "amd.tlb-control.persists",
        "§15.16.1",
        "VMRUN reads TLB_CONTROL and never clears it: the value applies on every VMRUN until the "
        "hypervisor changes it.",
    ),
    (
        "amd.tlb-control.unsupported",
        "§15.16.1 (unconfirmed)",
        "TLB_CONTROL 03h/07h without FlushByAsid, and reserved values, are undefined: modelled as "
        "no flush guaranteed.",
    ),
    (
        "amd.npt.walk",
        "§15.25.5",
        "With nested paging, every guest-physical reference of a guest walk is translated through "
        "the nested tables (long-mode format) rooted at nCR3.",
    ),
    (
        "amd.npt.asid-only",
        "§15.16; §15.25.1",
        "Nested translations are tagged by ASID only, not by nCR3: a new nCR3 with the same ASID "
        "leaves the old entries usable.",
    ),
    (
        "amd.npt.rights",
        "§15.25.7",
        "A translation is writable or executable only if both the guest and the nested entries "
        "allow it.",
    ),
    ("amd.npt.size", "§15.25.9", "A TLB entry has the smaller of the guest and nested page sizes."),
    (
        "amd.global.asid",
        "§15.16; §15.25.7",
        "Global pages are global only inside their ASID; under nested paging the guest PTE's G bit "
        "decides (with the guest's CR4.PGE: unconfirmed).",
    ),
    (
        "amd.guest-ops.asid",
        "§15.16.1",
        "INVLPG, MOV to CR3, CR0.PG and CR4.PGE/PAE/PSE changes, INVPCID and #PF act only on the "
        "current ASID, in host or guest mode.",
    ),
    (
        "amd.invlpg",
        "§15.16.1; Vol. 3 INVLPG",
        "INVLPG removes the translations of the page (current PCID, globals under any PCID) and "
        "the paging-structure caches of the current PCID, within the current ASID.",
    ),
    (
        "amd.mov-cr3",
        "§15.16.1",
        "MOV to CR3 removes the current ASID's non-global translations (of the new PCID with "
        "PCIDE) and its paging-structure caches.",
    ),
    (
        "amd.mov-cr4",
        "§15.16.1",
        "Changing CR4.PGE, PAE or PSE flushes the current ASID, global entries included.",
    ),
    ("amd.mov-cr0", "§15.16.1", "Setting or clearing CR0.PG flushes the current ASID."),
    (
        "amd.intercept.no-flush",
        "§15.16.1",
        "An intercepted guest operation that would flush causes a #VMEXIT and flushes nothing; the "
        "hypervisor must flush.",
    ),
    (
        "amd.invlpga",
        "§15.16.2; Vol. 3 INVLPGA",
        "INVLPGA removes the translation of one virtual page in the ASID given in ECX (global "
        "entries and paging-structure caches beyond its path: retentive reading, unconfirmed).",
    ),
    (
        "amd.invlpga.faults",
        "Vol. 3 INVLPGA (unconfirmed)",
        "INVLPGA is #UD with EFER.SVME = 0, #GP at CPL != 0, and intercepted in guest mode.",
    ),
    (
        "amd.flush-all-asids",
        "§15.16.1",
        "SMI, RSM and writes to MTRRs, IORRs and other translation-affecting MSRs flush every "
        "ASID.",
    ),
    (
        "amd.pf.invalidate",
        "§15.16.1 (unconfirmed)",
        "A page fault removes the translations that would be used for the address, within the "
        "current ASID, as on Intel.",
    ),
    ("amd.npf.no-invalidate", "§15.25.6 (unconfirmed)", "A nested page fault invalidates nothing."),
    (
        "amd.vmcb-paging-change",
        "§15.16",
        "A hypervisor that changes the guest's paging mode through the VMCB (CR0.PG/WP, CR3, "
        "CR4.PGE/PAE/PSE, EFER) must flush that guest's entries itself.",
    ),
    (
        "amd.hv.flush-gpa-space",
        "§TLFS 6.0b, HvCallFlushGuestPhysicalAddressSpace",
        "Hyper-V as L0 (not the APM): the hypercall invalidates, on every processor, the nested "
        "and guest entries of every non-zero ASID derived from the nested page table it names.",
    ),
    (
        "amd.hv.flush-gpa-list",
        "§TLFS 6.0b, HvCallFlushGuestPhysicalAddressList",
        "Hyper-V as L0 (not the APM): the hypercall invalidates, on every processor, the nested "
        "and guest translations of non-zero ASIDs whose GPA footprint lies in a range it lists, "
        "and the nested paging-structure caches whose region does; nothing else.",
    ),
]


def _amd() -> list[Rule]:
    return [Rule(i, "amd", s, "", summ) for i, s, summ in _AMD]


def _intel() -> list[Rule]:
    return [Rule(i, "intel", s, c, summ) for i, s, c, summ in _INTEL]


_REGISTRY: dict[str, Rule] = {}


def register(rules: list[Rule]) -> None:
    for r in rules:
        if r.id in _REGISTRY:
            raise ValueError(f"duplicate rule id {r.id}")
        _REGISTRY[r.id] = r


register(_intel())
register(_amd())


def rule(rule_id: str) -> Rule:
    return _REGISTRY[rule_id]


def all_rules(vendor: str | None = None) -> list[Rule]:
    return [r for r in _REGISTRY.values() if vendor is None or r.vendor == vendor]


def check_ids(ids: tuple[str, ...]) -> tuple[str, ...]:
    """Assert that every ID is registered (used where invalidations are built)."""
    for i in ids:
        if i not in _REGISTRY:
            raise KeyError(f"unregistered rule id {i}")
    return ids
