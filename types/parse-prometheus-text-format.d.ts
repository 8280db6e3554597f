// the package ships no types: what the metrics tests (core, integration) read of its result
declare module 'parse-prometheus-text-format' {
  interface MetricFamily {
    readonly name: string
    readonly help: string
    readonly type: string
    readonly metrics: readonly { readonly value: string; readonly labels?: Readonly<Record<string, string>> }[]
  }
  const parse: (text: string) => MetricFamily[]
  export default parse
}
