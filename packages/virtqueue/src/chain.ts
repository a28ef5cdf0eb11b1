// placeholder: implemented by the device-side work (see types.ts contract).
/** A validated descriptor chain (placeholder). */
export class DescriptorChain {}
