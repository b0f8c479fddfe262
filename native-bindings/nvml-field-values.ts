// nvmlDeviceGetFieldValues' record, nvmlFieldValue_t, as bytes: its size, the field ids the
// daemon asks for, and the decoding of its value union.

/** nvml.h's NVML_FI_DEV_GET_GPU_RECOVERY_ACTION: what the GPU needs after a fault (nvmlDeviceGpuRecoveryAction_t). */
export const FI_DEV_GET_GPU_RECOVERY_ACTION = 230;

/**
 * nvmlFieldValue_t: fieldId u32 @0, scopeId u32 @4, timestamp i64 @8, latencyUsec i64 @16,
 * valueType u32 @24, nvmlReturn u32 @28, value (nvmlValue_t, an 8-byte union) @32.
 */
export const FIELD_VALUE_SIZE = 40;

/** Decodes nvmlValue_t by nvmlValueType_t (double, uint, ulong, ulonglong, slonglong, sint, ushort). */
export function fieldNumber(buf: Buffer, valueType: number): number {
  switch (valueType) {
    case 0:
      return buf.readDoubleLE(32);
    case 1:
      return buf.readUInt32LE(32);
    case 2:
    case 3:
      return Number(buf.readBigUInt64LE(32));
    case 4:
      return Number(buf.readBigInt64LE(32));
    case 5:
      return buf.readInt32LE(32);
    case 6:
      return buf.readUInt16LE(32);
    default:
      throw new Error(`nvmlDeviceGetFieldValues answered an unknown value type ${valueType}`);
  }
}
