/**
 * Sanity Studio (v3) schema for the fields cms-sync writes onto each media object.
 *
 * cms-sync patches five fields onto every image or file it syncs. Declaring them keeps
 * Studio from showing "unknown field" warnings, makes them read-only (the worker owns
 * them: an edit would be overwritten or would make the slot look out of sync), and puts
 * a link to the Filestack copy next to the URL.
 *
 * Use: spread `filestackFields` into the `fields` of every image or file field that
 * deploy/media.toml (CMS_SYNC_CONFIG) maps, as the product and post types below do.
 * Plain TypeScript (no JSX), so it drops into any Studio project.
 */
import {createElement} from 'react'
import {defineArrayMember, defineField, defineType, type InputProps} from 'sanity'

/** The URL input, followed by a link that opens the Filestack copy. */
function FilestackLink(props: InputProps) {
  const url = typeof props.value === 'string' ? props.value : undefined
  return createElement(
    'div',
    null,
    props.renderDefault(props),
    url
      ? createElement(
          'a',
          {href: url, target: '_blank', rel: 'noopener noreferrer'},
          'Open the Filestack copy',
        )
      : null,
  )
}

export const filestackFields = [
  defineField({
    name: 'filestackHandle',
    title: 'Filestack handle',
    type: 'string',
    readOnly: true,
    description: 'Written by cms-sync.',
  }),
  defineField({
    name: 'filestackUrl',
    title: 'Filestack URL',
    type: 'url',
    readOnly: true,
    description: 'Written by cms-sync. Frontends read this URL.',
    components: {input: FilestackLink},
  }),
  defineField({
    name: 'filestackSize',
    title: 'Filestack size (bytes)',
    type: 'number',
    readOnly: true,
  }),
  defineField({
    name: 'filestackMimeType',
    title: 'Filestack MIME type',
    type: 'string',
    readOnly: true,
  }),
  defineField({
    name: 'filestackSourceAsset',
    title: 'Synced from asset',
    type: 'string',
    readOnly: true,
    description: 'The Sanity asset the Filestack copy was made from (cms-sync compares it).',
  }),
]

export const product = defineType({
  name: 'product',
  title: 'Product',
  type: 'document',
  fields: [
    defineField({name: 'title', type: 'string'}),
    defineField({name: 'mainImage', type: 'image', fields: filestackFields}),
    defineField({
      name: 'gallery',
      type: 'array',
      of: [defineArrayMember({type: 'image', fields: filestackFields})],
    }),
    defineField({name: 'specSheet', type: 'file', fields: filestackFields}),
  ],
})

export const post = defineType({
  name: 'post',
  title: 'Post',
  type: 'document',
  fields: [
    defineField({name: 'title', type: 'string'}),
    defineField({name: 'mainImage', type: 'image', fields: filestackFields}),
  ],
})

export const schemaTypes = [product, post]
